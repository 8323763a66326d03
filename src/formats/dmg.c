/*
 * The dmg format, read-only: Apple UDIF images (SPECS.md, "DMG": libyal's
 * "Mac OS disk image types", sections "UDIF resource file", "UDIF XML plist"
 * and the block table). The sample images and qemu-img 7.2 are the ground
 * truth where the document leaves gaps.
 *
 * Layout: the "koly" trailer near the end of the file points at the block
 * tables ("mish"), either base64 <data> in the XML plist or length-prefixed
 * resources in a binary resource fork. Each table maps runs of guest sectors
 * to chunks: zeros (types 0 and 2), stored bytes (1) or zlib, bzip2 or LZFSE
 * streams (0x80000005..7). The virtual size is the trailer's sector count.
 *
 * As in qemu-img, the plist is not parsed as a tree: every <data> element
 * that decodes to a "mish" table counts, wherever it is, so the scanner is a
 * bounded linear search with nothing to recurse into.
 *
 * Whole compressed chunks decompress without a lock, so the parallel
 * requests of convert use every core; parts of chunks share a one-chunk
 * cache.
 *
 * Left out: writing, ADC (0x80000004) and LZMA (0x80000008) chunks, which
 * open with a warning and fail when read, as in qemu-img; LZFSE chunks fail
 * when read because Debian has no LZFSE library.
 */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include <bzlib.h>
#include <zlib.h>

#include "config.h"
#include "core/driver.h"

#ifdef VIMG_HAVE_LIBDEFLATE
#include <libdeflate.h>
#endif

#define DMG_SECTOR_SIZE         512
#define DMG_TRAILER_SIZE        512

/* koly trailer field offsets (spec "UDIF resource file"). */
#define DMG_KOLY_OFF_DATA_FORK_OFFSET   24      /* BE64 */
#define DMG_KOLY_OFF_RSRC_FORK_OFFSET   40      /* BE64 */
#define DMG_KOLY_OFF_RSRC_FORK_LENGTH   48      /* BE64 */
#define DMG_KOLY_OFF_XML_OFFSET         216     /* BE64 */
#define DMG_KOLY_OFF_XML_LENGTH         224     /* BE64 */
#define DMG_KOLY_OFF_SECTOR_COUNT       492     /* BE64 */

/* mish block table (spec "block table"): a header, then 40-byte entries. */
#define DMG_MISH_OFF_START_SECTOR       8       /* BE64 */
#define DMG_MISH_OFF_DATA_OFFSET        24      /* BE64 */
#define DMG_MISH_HEADER_SIZE            204
#define DMG_ENTRY_OFF_TYPE              0       /* BE32 */
#define DMG_ENTRY_OFF_START_SECTOR      8       /* BE64, from the table's start sector */
#define DMG_ENTRY_OFF_N_SECTORS         16      /* BE64 */
#define DMG_ENTRY_OFF_OFFSET            24      /* BE64, from the data fork */
#define DMG_ENTRY_OFF_LENGTH            32      /* BE64 */
#define DMG_ENTRY_SIZE                  40

/* Resource fork header. */
#define DMG_RSRC_OFF_DATA_OFFSET        0       /* BE32 */
#define DMG_RSRC_OFF_DATA_LENGTH        8       /* BE32 */
#define DMG_RSRC_HEADER_SIZE            16

#define DMG_TYPE_ZERO           0x00000000u
#define DMG_TYPE_RAW            0x00000001u
#define DMG_TYPE_IGNORE         0x00000002u
#define DMG_TYPE_ZLIB           0x80000005u
#define DMG_TYPE_BZIP2          0x80000006u
#define DMG_TYPE_LZFSE          0x80000007u
#define DMG_TYPE_COMMENT        0x7ffffffeu
#define DMG_TYPE_TERMINATOR     0xffffffffu

/* Limits as qemu-img 7.2 enforces them, and one of ours for the plist. */
#define DMG_MAX_CHUNK_SECTORS   131072u                 /* 64 MiB of guest data */
#define DMG_MAX_CHUNK_LENGTH    (64u << 20)
#define DMG_MAX_SECTOR_COUNT    UINT64_C(0x3fffffffe00000)
#define DMG_MAX_PLIST           (64u << 20)
#define DMG_MAX_TRANSFER        (16u << 20)

struct dmg_chunk {
    uint32_t type;
    uint64_t sector;            /* first guest sector */
    uint64_t n_sectors;
    uint64_t offset;            /* in the file */
    uint64_t length;            /* bytes in the file */
};

struct dmg_state {
    struct dmg_chunk *chunks;   /* sorted by sector after open */
    uint32_t n_chunks;
    uint32_t cap_chunks;
    uint64_t size;
    uint64_t data_fork_offset;
    uint64_t koly_offset;
    uint64_t max_length;        /* of compressed chunks */
    uint64_t max_sectors;       /* of compressed chunks */
    bool has_warned;            /* about a chunk type we cannot read */
    pthread_mutex_t lock;       /* protects the cache below and its buffers */
    bool has_lock;
    uint8_t *compressed;        /* max_length bytes */
    uint8_t *cached;            /* max_sectors sectors: chunk cached_index, inflated */
    uint32_t cached_index;
    bool has_cached;
};

static uint32_t
dmg_be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | (uint32_t)p[3];
}

static uint64_t
dmg_be64(const uint8_t *p)
{
    return (uint64_t)dmg_be32(p) << 32 | dmg_be32(p + 4);
}

/* As qemu-img: a name ending in ".dmg", since the trailer is not at the start. */
static int
dmg_probe(const uint8_t *buf, size_t len, const char *filename)
{
    size_t n = filename ? strlen(filename) : 0;

    (void)buf;
    /* qemu-img opens an empty file as raw without probing. */
    if (len == 0)
        return 0;
    /* Above cloop's 2, below any binary magic. */
    return n > 4 && strcmp(filename + n - 4, ".dmg") == 0 ? 3 : 0;
}

/* qemu-img's words for metadata it rejects without saying why. */
static int
dmg_invalid(struct vimg_node *node, struct vimg_error *err)
{
    return vimg_error_set(err, EINVAL, "Could not open '%s': Invalid argument", node->filename);
}

/*
 * Finds the trailer: at the end of the file, or (as qemu-img accepts it)
 * anywhere in the last 1024 bytes of the file rounded up to whole sectors.
 */
static int
dmg_find_koly(struct vimg_node *node, uint64_t *out, struct vimg_error *err)
{
    int64_t file_len = vimg_node_length(node->file, err);
    uint8_t buf[2 * DMG_TRAILER_SIZE];
    uint64_t len, rounded, start;
    int ret;

    if (file_len < 0)
        return (int)file_len;
    len = (uint64_t)file_len;
    rounded = (len + DMG_SECTOR_SIZE - 1) / DMG_SECTOR_SIZE * DMG_SECTOR_SIZE;
    if (rounded < DMG_TRAILER_SIZE)
        return vimg_error_set(err, EINVAL, "dmg file must be at least 512 bytes long");
    start = rounded >= sizeof(buf) ? rounded - sizeof(buf) : 0;
    if ((ret = vimg_node_pread_padded(node->file, start, buf, len - start, err)) < 0)
        return ret;
    if (len - start >= DMG_TRAILER_SIZE &&
        memcmp(buf + (len - start - DMG_TRAILER_SIZE), "koly", 4) == 0) {
        *out = len - DMG_TRAILER_SIZE;
        return 0;
    }
    for (uint64_t i = 0; i + 4 <= len - start; i++) {
        if (memcmp(buf + i, "koly", 4) == 0) {
            *out = start + i;
            return 0;
        }
    }
    return vimg_error_set(err, EINVAL, "Could not locate UDIF trailer in dmg file");
}

static bool
dmg_type_is_compressed(uint32_t type)
{
    return type == DMG_TYPE_ZLIB || type == DMG_TYPE_BZIP2 || type == DMG_TYPE_LZFSE;
}

static bool
dmg_type_is_known(uint32_t type)
{
    return type == DMG_TYPE_ZERO || type == DMG_TYPE_RAW || type == DMG_TYPE_IGNORE ||
           dmg_type_is_compressed(type);
}

/* Bounds a chunk as qemu-img does; its two messages come on a line of their own. */
static int
dmg_check_chunk(struct vimg_node *node, const struct dmg_chunk *c, uint32_t index,
                struct vimg_error *err)
{
    struct dmg_state *s = node->state;

    if (!dmg_type_is_known(c->type)) {
        if (!s->has_warned)
            vimg_warn("warning: Image contains chunks of unknown type %" PRIx32 ", accessing "
                      "them will result in I/O errors", c->type);
        s->has_warned = true;
        return 0;
    }
    if (c->type != DMG_TYPE_ZERO && c->type != DMG_TYPE_IGNORE &&
        c->n_sectors > DMG_MAX_CHUNK_SECTORS) {
        vimg_warn("sector count %" PRIu64 " for chunk %" PRIu32 " is larger than max (%u)",
                  c->n_sectors, index, DMG_MAX_CHUNK_SECTORS);
        return dmg_invalid(node, err);
    }
    if (c->length > DMG_MAX_CHUNK_LENGTH) {
        vimg_warn("length %" PRIu64 " for chunk %" PRIu32 " is larger than max (%u)",
                  c->length, index, DMG_MAX_CHUNK_LENGTH);
        return dmg_invalid(node, err);
    }
    return 0;
}

static int
dmg_add_chunk(struct vimg_node *node, const struct dmg_chunk *c, struct vimg_error *err)
{
    struct dmg_state *s = node->state;
    int ret;

    if ((ret = dmg_check_chunk(node, c, s->n_chunks, err)) < 0)
        return ret;
    if (s->n_chunks == UINT32_MAX)
        return dmg_invalid(node, err);
    if (s->n_chunks == s->cap_chunks) {
        uint32_t cap = s->cap_chunks ? s->cap_chunks * 2 : 64;
        struct dmg_chunk *p = reallocarray(s->chunks, cap, sizeof(*p));
        if (!p)
            return vimg_error_set(err, ENOMEM, "Out of memory");
        s->chunks = p;
        s->cap_chunks = cap;
    }
    s->chunks[s->n_chunks++] = *c;
    if (dmg_type_is_compressed(c->type)) {
        if (c->length > s->max_length)
            s->max_length = c->length;
        if (c->n_sectors > s->max_sectors)
            s->max_sectors = c->n_sectors;
    }
    return 0;
}

/*
 * Adds the chunks of one decoded block table. A table that is not "mish" is
 * skipped; the entry count is what the data holds, not the header's field.
 * Sums that overflow leave a chunk no read can reach.
 */
static int
dmg_parse_mish(struct vimg_node *node, const uint8_t *p, size_t len, struct vimg_error *err)
{
    struct dmg_state *s = node->state;
    uint64_t start, data_offset;
    int ret;

    if (len < DMG_MISH_HEADER_SIZE || memcmp(p, "mish", 4) != 0)
        return 0;
    start = dmg_be64(p + DMG_MISH_OFF_START_SECTOR);
    data_offset = dmg_be64(p + DMG_MISH_OFF_DATA_OFFSET);
    for (size_t off = DMG_MISH_HEADER_SIZE; off + DMG_ENTRY_SIZE <= len; off += DMG_ENTRY_SIZE) {
        const uint8_t *e = p + off;
        struct dmg_chunk c = {
            .type = dmg_be32(e + DMG_ENTRY_OFF_TYPE),
            .n_sectors = dmg_be64(e + DMG_ENTRY_OFF_N_SECTORS),
            .length = dmg_be64(e + DMG_ENTRY_OFF_LENGTH),
        };

        if (c.type == DMG_TYPE_COMMENT || c.type == DMG_TYPE_TERMINATOR)
            continue;
        if (__builtin_add_overflow(start, dmg_be64(e + DMG_ENTRY_OFF_START_SECTOR), &c.sector))
            c.sector = UINT64_MAX;
        if (__builtin_add_overflow(s->data_fork_offset, data_offset, &c.offset) ||
            __builtin_add_overflow(c.offset, dmg_be64(e + DMG_ENTRY_OFF_OFFSET), &c.offset))
            c.offset = UINT64_MAX;
        if ((ret = dmg_add_chunk(node, &c, err)) < 0)
            return ret;
    }
    return 0;
}

static int
dmg_base64_value(uint8_t ch)
{
    if (ch >= 'A' && ch <= 'Z')
        return ch - 'A';
    if (ch >= 'a' && ch <= 'z')
        return ch - 'a' + 26;
    if (ch >= '0' && ch <= '9')
        return ch - '0' + 52;
    if (ch == '+')
        return 62;
    if (ch == '/')
        return 63;
    return -1;
}

/* Decodes base64, skipping whitespace and other stray bytes; out holds len * 3 / 4 + 3. */
static size_t
dmg_base64_decode(const uint8_t *in, size_t len, uint8_t *out)
{
    uint32_t acc = 0;
    size_t n = 0;
    int bits = 0;

    for (size_t i = 0; i < len; i++) {
        int v = dmg_base64_value(in[i]);
        if (v < 0)
            continue;
        acc = (acc << 6 | (uint32_t)v) & 0xffffff;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out[n++] = (uint8_t)(acc >> bits);
        }
    }
    return n;
}

static const uint8_t *
dmg_find(const uint8_t *hay, size_t len, const char *needle)
{
    return memmem(hay, len, needle, strlen(needle));
}

/* Every <data>...</data> in the plist; one left open is an error. */
static int
dmg_parse_plist(struct vimg_node *node, const uint8_t *xml, size_t len, struct vimg_error *err)
{
    const uint8_t *p = xml, *end = xml + len;
    uint8_t *bin = malloc(len / 4 * 3 + 3);
    int ret = 0;

    if (!bin)
        return vimg_error_set(err, ENOMEM, "Out of memory");
    while (ret == 0 && (p = dmg_find(p, (size_t)(end - p), "<data>")) != NULL) {
        const uint8_t *close;
        size_t n;

        p += strlen("<data>");
        if (!(close = dmg_find(p, (size_t)(end - p), "</data>"))) {
            ret = dmg_invalid(node, err);
            break;
        }
        n = dmg_base64_decode(p, (size_t)(close - p), bin);
        ret = dmg_parse_mish(node, bin, n, err);
        p = close + strlen("</data>");
    }
    free(bin);
    return ret;
}

/* The resource data: a run of resources, each a BE32 length and its bytes. */
static int
dmg_parse_rsrc(struct vimg_node *node, const uint8_t *fork, size_t len, struct vimg_error *err)
{
    uint64_t data_offset, data_len, pos;
    int ret;

    if (len < DMG_RSRC_HEADER_SIZE)
        return dmg_invalid(node, err);
    data_offset = dmg_be32(fork + DMG_RSRC_OFF_DATA_OFFSET);
    data_len = dmg_be32(fork + DMG_RSRC_OFF_DATA_LENGTH);
    if (data_offset > len || data_len > len - data_offset)
        return dmg_invalid(node, err);
    for (pos = data_offset; pos < data_offset + data_len;) {
        uint64_t n;

        if (data_offset + data_len - pos < 4)
            return dmg_invalid(node, err);
        n = dmg_be32(fork + pos);
        pos += 4;
        if (n > data_offset + data_len - pos)
            return dmg_invalid(node, err);
        if ((ret = dmg_parse_mish(node, fork + pos, (size_t)n, err)) < 0)
            return ret;
        pos += n;
    }
    return 0;
}

/* Reads [offset, +len) that must lie before the trailer and parses it with fn. */
static int
dmg_load_tables(struct vimg_node *node, uint64_t offset, uint64_t len,
                int (*fn)(struct vimg_node *, const uint8_t *, size_t, struct vimg_error *),
                struct vimg_error *err)
{
    struct dmg_state *s = node->state;
    uint8_t *buf;
    int ret;

    if (offset > s->koly_offset || len > s->koly_offset - offset || len > DMG_MAX_PLIST)
        return dmg_invalid(node, err);
    if (!(buf = malloc(len)))
        return vimg_error_set(err, ENOMEM, "Out of memory");
    ret = vimg_node_pread_padded(node->file, offset, buf, len, err);
    if (ret == 0)
        ret = fn(node, buf, (size_t)len, err);
    free(buf);
    return ret;
}

static int
dmg_chunk_cmp(const void *a, const void *b)
{
    const struct dmg_chunk *x = a, *y = b;

    return x->sector < y->sector ? -1 : x->sector > y->sector;
}

static int
dmg_read_trailer(struct vimg_node *node, struct vimg_error *err)
{
    struct dmg_state *s = node->state;
    uint8_t koly[DMG_TRAILER_SIZE];
    uint64_t rsrc_offset, rsrc_len, xml_offset, xml_len, sectors;
    int ret;

    if ((ret = dmg_find_koly(node, &s->koly_offset, err)) < 0 ||
        (ret = vimg_node_pread_padded(node->file, s->koly_offset, koly, sizeof(koly), err)) < 0)
        return ret;
    s->data_fork_offset = dmg_be64(koly + DMG_KOLY_OFF_DATA_FORK_OFFSET);
    rsrc_offset = dmg_be64(koly + DMG_KOLY_OFF_RSRC_FORK_OFFSET);
    rsrc_len = dmg_be64(koly + DMG_KOLY_OFF_RSRC_FORK_LENGTH);
    xml_offset = dmg_be64(koly + DMG_KOLY_OFF_XML_OFFSET);
    xml_len = dmg_be64(koly + DMG_KOLY_OFF_XML_LENGTH);
    sectors = dmg_be64(koly + DMG_KOLY_OFF_SECTOR_COUNT);
    if (s->data_fork_offset > s->koly_offset)
        return dmg_invalid(node, err);
    /* The resource fork wins when there is one, as in qemu-img. */
    if (rsrc_len)
        ret = dmg_load_tables(node, rsrc_offset, rsrc_len, dmg_parse_rsrc, err);
    else if (xml_len)
        ret = dmg_load_tables(node, xml_offset, xml_len, dmg_parse_plist, err);
    else
        ret = dmg_invalid(node, err);
    if (ret < 0)
        return ret;
    /* qemu-img checks the size last, once the driver has opened. */
    if (sectors > DMG_MAX_SECTOR_COUNT)
        return vimg_error_set(err, EFBIG, "Could not refresh total sector count: File too large");
    s->size = sectors * DMG_SECTOR_SIZE;
    return 0;
}

static void
dmg_close(struct vimg_node *node)
{
    struct dmg_state *s = node->state;

    free(s->chunks);
    free(s->compressed);
    free(s->cached);
    s->chunks = NULL;
    s->compressed = s->cached = NULL;
    if (s->has_lock)
        pthread_mutex_destroy(&s->lock);
    s->has_lock = false;
}

static int
dmg_open(struct vimg_node *node, struct vimg_opts *opts, unsigned flags, struct vimg_error *err)
{
    struct dmg_state *s = node->state;
    int ret;

    (void)opts;
    if (flags & VIMG_OPEN_RDWR)
        return vimg_error_set(err, EACCES, "Image is read-only");
    if ((ret = dmg_read_trailer(node, err)) < 0)
        goto fail;
    if (s->n_chunks)
        qsort(s->chunks, s->n_chunks, sizeof(*s->chunks), dmg_chunk_cmp);
    /* Bounded by the chunk checks: 64 MiB each. */
    s->compressed = malloc(s->max_length + 1);
    s->cached = malloc(s->max_sectors * DMG_SECTOR_SIZE + 1);
    if (!s->compressed || !s->cached) {
        ret = vimg_error_set(err, ENOMEM, "Out of memory");
        goto fail;
    }
    pthread_mutex_init(&s->lock, NULL);
    s->has_lock = true;
    node->request_alignment = DMG_SECTOR_SIZE;
    node->max_transfer = DMG_MAX_TRANSFER;
    return 0;
fail:
    dmg_close(node);
    return ret;
}

static int64_t
dmg_length(struct vimg_node *node, struct vimg_error *err)
{
    struct dmg_state *s = node->state;

    (void)err;
    return (int64_t)s->size;
}

/* The index of the chunk holding sector, or -1. */
static int64_t
dmg_find_chunk(const struct dmg_state *s, uint64_t sector)
{
    uint32_t lo = 0, hi = s->n_chunks;

    /* The last chunk that starts at or before sector. */
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2;
        if (s->chunks[mid].sector <= sector)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (lo == 0 || sector - s->chunks[lo - 1].sector >= s->chunks[lo - 1].n_sectors)
        return -1;
    return lo - 1;
}

/*
 * libdeflate (about twice as fast) first; on any failure zlib decides, so
 * that what is accepted stays what zlib accepts.
 */
static int
dmg_inflate_zlib(const uint8_t *in, uint64_t in_len, uint8_t *out, uint64_t out_len)
{
    z_stream zs;
    int zret;

#ifdef VIMG_HAVE_LIBDEFLATE
    struct libdeflate_decompressor *d = libdeflate_alloc_decompressor();

    if (d) {
        enum libdeflate_result r = libdeflate_zlib_decompress(d, in, in_len, out, out_len, NULL);

        libdeflate_free_decompressor(d);
        if (r == LIBDEFLATE_SUCCESS)
            return 0;
    }
#endif
    memset(&zs, 0, sizeof(zs));
    if (inflateInit(&zs) != Z_OK)
        return -ENOMEM;
    zs.next_in = (uint8_t *)in;
    zs.avail_in = (uInt)in_len;
    zs.next_out = out;
    zs.avail_out = (uInt)out_len;
    zret = inflate(&zs, Z_FINISH);
    inflateEnd(&zs);
    return zret == Z_STREAM_END && zs.total_out == out_len ? 0 : -EIO;
}

static int
dmg_inflate_bzip2(const uint8_t *in, uint64_t in_len, uint8_t *out, uint64_t out_len)
{
    bz_stream bz;
    int bret;

    memset(&bz, 0, sizeof(bz));
    if (BZ2_bzDecompressInit(&bz, 0, 0) != BZ_OK)
        return -ENOMEM;
    bz.next_in = (char *)in;
    bz.avail_in = (unsigned)in_len;
    bz.next_out = (char *)out;
    bz.avail_out = (unsigned)out_len;
    bret = BZ2_bzDecompress(&bz);
    BZ2_bzDecompressEnd(&bz);
    return bret == BZ_STREAM_END && bz.total_out_lo32 == out_len && bz.total_out_hi32 == 0
           ? 0 : -EIO;
}

/* Decompresses chunk index into out (its whole length), using compressed as scratch. */
static int
dmg_decompress_chunk(struct vimg_node *node, uint32_t index, uint8_t *compressed, uint8_t *out,
                     struct vimg_error *err)
{
    struct dmg_state *s = node->state;
    const struct dmg_chunk *c = &s->chunks[index];
    uint64_t out_len = c->n_sectors * DMG_SECTOR_SIZE;
    int ret;

    if (c->type == DMG_TYPE_LZFSE)
        return vimg_error_set(err, ENOTSUP, "Chunk %" PRIu32 " is LZFSE-compressed (type 0x%"
                              PRIx32 "), which this build cannot read", index, c->type);
    if ((ret = vimg_node_pread_padded(node->file, c->offset, compressed, c->length, err)) < 0)
        return ret;
    ret = c->type == DMG_TYPE_ZLIB ? dmg_inflate_zlib(compressed, c->length, out, out_len)
                                   : dmg_inflate_bzip2(compressed, c->length, out, out_len);
    if (ret < 0)
        return vimg_error_set(err, -ret, "Chunk %" PRIu32 " at offset 0x%" PRIx64 " does not "
                              "decompress to %" PRIu64 " bytes", index, c->offset, out_len);
    return 0;
}

/* Makes chunk index the cached one. Called with s->lock held. */
static int
dmg_load_chunk(struct vimg_node *node, uint32_t index, struct vimg_error *err)
{
    struct dmg_state *s = node->state;
    int ret;

    if (s->has_cached && s->cached_index == index)
        return 0;
    s->has_cached = false;
    if ((ret = dmg_decompress_chunk(node, index, s->compressed, s->cached, err)) < 0)
        return ret;
    s->cached_index = index;
    s->has_cached = true;
    return 0;
}

/*
 * Reads len bytes at byte skip of chunk index into out. A whole compressed
 * chunk decompresses straight into out without the lock (scratch is a
 * max_length buffer, allocated on first use), so that the parallel requests
 * of convert decompress on every core; parts of one go through the cache.
 */
static int
dmg_read_chunk(struct vimg_node *node, uint32_t index, uint64_t skip, uint8_t *out,
               uint64_t len, uint8_t **scratch, struct vimg_error *err)
{
    struct dmg_state *s = node->state;
    const struct dmg_chunk *c = &s->chunks[index];
    uint64_t pos;
    int ret;

    switch (c->type) {
    case DMG_TYPE_ZERO:
    case DMG_TYPE_IGNORE:
        memset(out, 0, len);
        return 0;
    case DMG_TYPE_RAW:
        if (__builtin_add_overflow(c->offset, skip, &pos))
            return vimg_error_set(err, EIO, "Chunk %" PRIu32 " lies past the end of the file",
                                  index);
        return vimg_node_pread_padded(node->file, pos, out, len, err);
    case DMG_TYPE_ZLIB:
    case DMG_TYPE_BZIP2:
    case DMG_TYPE_LZFSE:
        if (skip == 0 && len == c->n_sectors * DMG_SECTOR_SIZE) {
            if (!*scratch && !(*scratch = malloc(s->max_length + 1)))
                return vimg_error_set(err, ENOMEM, "Out of memory");
            return dmg_decompress_chunk(node, index, *scratch, out, err);
        }
        pthread_mutex_lock(&s->lock);
        if ((ret = dmg_load_chunk(node, index, err)) == 0)
            memcpy(out, s->cached + skip, len);
        pthread_mutex_unlock(&s->lock);
        return ret;
    default:
        return vimg_error_set(err, EIO, "Chunk %" PRIu32 " has unknown type 0x%" PRIx32,
                              index, c->type);
    }
}

static int
dmg_read(struct vimg_node *node, uint64_t offset, uint8_t *out, uint64_t bytes,
         struct vimg_error *err)
{
    struct dmg_state *s = node->state;
    uint8_t *scratch = NULL;
    int ret = 0;

    while (bytes) {
        uint64_t sector = offset / DMG_SECTOR_SIZE;
        int64_t index = dmg_find_chunk(s, sector);
        const struct dmg_chunk *c;
        uint64_t skip, len;

        if (index < 0) {
            ret = vimg_error_set(err, EIO, "Sector %" PRIu64 " is in no chunk", sector);
            break;
        }
        c = &s->chunks[index];
        skip = offset - c->sector * DMG_SECTOR_SIZE;
        len = c->n_sectors * DMG_SECTOR_SIZE - skip;
        if (len > bytes)
            len = bytes;
        if ((ret = dmg_read_chunk(node, (uint32_t)index, skip, out, len, &scratch, err)) < 0)
            break;
        offset += len;
        out += len;
        bytes -= len;
    }
    free(scratch);
    return ret;
}

const struct vimg_driver vimg_dmg_driver = {
    .name = "dmg",
    .kind = VIMG_DRIVER_FORMAT,
    .lacks_get_info = true,
    .state_size = sizeof(struct dmg_state),
    .probe = dmg_probe,
    .open = dmg_open,
    .close = dmg_close,
    .pread = dmg_read,
    .length = dmg_length,
};
