/*
 * The parallels format, read-only: Parallels expandable images with the
 * "WithoutFreeSpace" (v1) and "WithouFreSpacExt" (v2) headers, as in
 * docs/interop/parallels.rst of qemu/qemu (SPECS.md, "Parallels"): header,
 * BAT, data area, and the Format Extension cluster.
 *
 * The Format Extension is validated as qemu-img 7.2 validates it (checksum,
 * feature headers, the dirty bitmap feature's fields) so that the same images
 * open, but the dirty bitmap itself is not loaded: vimg exposes no bitmaps of
 * this format.
 *
 * Left out: writing (a read-write open succeeds, writes are not supported)
 * and `check`. Bytes past the end of the file read as zeros, as in qemu-img.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "core/driver.h"

#define PARALLELS_SECTOR_SIZE       512
#define PARALLELS_HEADER_SIZE       64

/* Header field offsets (spec "Header"). */
#define PARALLELS_OFF_MAGIC         0       /* char[16] */
#define PARALLELS_OFF_VERSION       16      /* LE32 */
#define PARALLELS_OFF_TRACKS        28      /* LE32, cluster size in sectors */
#define PARALLELS_OFF_BAT_ENTRIES   32      /* LE32 */
#define PARALLELS_OFF_NB_SECTORS    36      /* LE64; v1 uses the low 32 bits only */
#define PARALLELS_OFF_EXT_OFF       56      /* LE64, in sectors */

#define PARALLELS_MAGIC_V1          "WithoutFreeSpace"
#define PARALLELS_MAGIC_V2          "WithouFreSpacExt"
#define PARALLELS_VERSION           2

/* Format Extension (spec "Format Extension"). */
#define PARALLELS_EXT_MAGIC         UINT64_C(0xab234cef23dcea87)
#define PARALLELS_EXT_OFF_MAGIC     0       /* LE64 */
#define PARALLELS_EXT_OFF_CHECKSUM  8       /* MD5 of the cluster from byte 24 on */
#define PARALLELS_EXT_HEADER_SIZE   24
#define PARALLELS_FEAT_OFF_MAGIC    0       /* LE64 */
#define PARALLELS_FEAT_OFF_FLAGS    8       /* LE64 */
#define PARALLELS_FEAT_OFF_SIZE     16      /* LE32, data_size */
#define PARALLELS_FEAT_HEADER_SIZE  24
#define PARALLELS_FEAT_END          UINT64_C(0)
#define PARALLELS_FEAT_DIRTY_BITMAP UINT64_C(0x20385fae252cb34a)

/* Dirty bitmap feature data (spec "Dirty bitmaps feature"). */
#define PARALLELS_BITMAP_OFF_SIZE           0       /* LE64, sectors */
#define PARALLELS_BITMAP_OFF_GRANULARITY    24      /* LE32, sectors per bit */
#define PARALLELS_BITMAP_OFF_L1_SIZE        28      /* LE32 */
#define PARALLELS_BITMAP_HEADER_SIZE        32

/* Limits as qemu-img 7.2 enforces them. */
#define PARALLELS_MAX_TRACKS        (INT32_MAX / 513)
#define PARALLELS_MAX_BAT_ENTRIES   (INT32_MAX / 4)
#define PARALLELS_MAX_READ          UINT64_C(2147483136)    /* one request, INT_MAX sectors */
#define PARALLELS_MAX_SECTORS       UINT64_C(0x3fffffffe00000)

struct parallels_state {
    uint32_t *bat;              /* the n_stored first BAT entries; later ones are 0 */
    uint64_t n_stored;
    uint32_t n_bat;             /* bat_entries */
    uint64_t cluster_size;      /* bytes */
    uint64_t bat_unit;          /* bytes per BAT unit: a sector (v1) or a cluster (v2) */
    uint64_t n_sectors;
};

static uint32_t
parallels_le32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t
parallels_le64(const uint8_t *p)
{
    return (uint64_t)parallels_le32(p) | (uint64_t)parallels_le32(p + 4) << 32;
}

/* 0 = not parallels, 1 = v1, 2 = v2 */
static int
parallels_header_version(const uint8_t *buf)
{
    if (parallels_le32(buf + PARALLELS_OFF_VERSION) != PARALLELS_VERSION)
        return 0;
    if (memcmp(buf + PARALLELS_OFF_MAGIC, PARALLELS_MAGIC_V1, 16) == 0)
        return 1;
    if (memcmp(buf + PARALLELS_OFF_MAGIC, PARALLELS_MAGIC_V2, 16) == 0)
        return 2;
    return 0;
}

static int
parallels_probe(const uint8_t *buf, size_t len, const char *filename)
{
    (void)filename;
    if (len < PARALLELS_HEADER_SIZE)
        return 0;
    return parallels_header_version(buf) ? 100 : 0;
}

/* How many of len bytes at offset lie inside the file. */
static int
parallels_in_file(struct vimg_node *node, uint64_t offset, uint64_t len, uint64_t *out,
                  struct vimg_error *err)
{
    int64_t file_len = vimg_node_length(node->file, err);

    if (file_len < 0)
        return (int)file_len;
    *out = offset >= (uint64_t)file_len ? 0 : (uint64_t)file_len - offset;
    if (*out > len)
        *out = len;
    return 0;
}

/* MD5 (RFC 1321), for the Format Extension checksum. */
struct parallels_md5 {
    uint32_t h[4];
    uint64_t n_bytes;
    uint8_t block[64];
};

static const uint32_t parallels_md5_k[64] = {
    0xd76aa478, 0xe8c7b756, 0x242070db, 0xc1bdceee, 0xf57c0faf, 0x4787c62a, 0xa8304613,
    0xfd469501, 0x698098d8, 0x8b44f7af, 0xffff5bb1, 0x895cd7be, 0x6b901122, 0xfd987193,
    0xa679438e, 0x49b40821, 0xf61e2562, 0xc040b340, 0x265e5a51, 0xe9b6c7aa, 0xd62f105d,
    0x02441453, 0xd8a1e681, 0xe7d3fbc8, 0x21e1cde6, 0xc33707d6, 0xf4d50d87, 0x455a14ed,
    0xa9e3e905, 0xfcefa3f8, 0x676f02d9, 0x8d2a4c8a, 0xfffa3942, 0x8771f681, 0x6d9d6122,
    0xfde5380c, 0xa4beea44, 0x4bdecfa9, 0xf6bb4b60, 0xbebfbc70, 0x289b7ec6, 0xeaa127fa,
    0xd4ef3085, 0x04881d05, 0xd9d4d039, 0xe6db99e5, 0x1fa27cf8, 0xc4ac5665, 0xf4292244,
    0x432aff97, 0xab9423a7, 0xfc93a039, 0x655b59c3, 0x8f0ccc92, 0xffeff47d, 0x85845dd1,
    0x6fa87e4f, 0xfe2ce6e0, 0xa3014314, 0x4e0811a1, 0xf7537e82, 0xbd3af235, 0x2ad7d2bb,
    0xeb86d391,
};

static const uint8_t parallels_md5_r[16] = { 7, 12, 17, 22, 5, 9, 14, 20, 4, 11, 16, 23,
                                             6, 10, 15, 21 };

static void
parallels_md5_block(uint32_t h[4], const uint8_t *p)
{
    uint32_t a = h[0], b = h[1], c = h[2], d = h[3];

    for (int i = 0; i < 64; i++) {
        unsigned r = parallels_md5_r[i / 16 * 4 + i % 4];
        uint32_t f, t;
        int g;

        if (i < 16) {
            f = (b & c) | (~b & d);
            g = i;
        } else if (i < 32) {
            f = (d & b) | (~d & c);
            g = (5 * i + 1) % 16;
        } else if (i < 48) {
            f = b ^ c ^ d;
            g = (3 * i + 5) % 16;
        } else {
            f = c ^ (b | ~d);
            g = (7 * i) % 16;
        }
        t = d;
        d = c;
        c = b;
        f += a + parallels_md5_k[i] + parallels_le32(p + 4 * g);
        b += f << r | f >> (32 - r);
        a = t;
    }
    h[0] += a;
    h[1] += b;
    h[2] += c;
    h[3] += d;
}

static void
parallels_md5_init(struct parallels_md5 *m)
{
    m->h[0] = 0x67452301;
    m->h[1] = 0xefcdab89;
    m->h[2] = 0x98badcfe;
    m->h[3] = 0x10325476;
    m->n_bytes = 0;
}

/* Feeds len bytes of p, or of zeros when p is NULL. */
static void
parallels_md5_update(struct parallels_md5 *m, const uint8_t *p, uint64_t len)
{
    while (len) {
        size_t used = (size_t)(m->n_bytes % 64);
        size_t n = 64 - used < len ? 64 - used : (size_t)len;

        if (p)
            memcpy(m->block + used, p, n);
        else
            memset(m->block + used, 0, n);
        m->n_bytes += n;
        len -= n;
        if (p)
            p += n;
        if (m->n_bytes % 64 == 0)
            parallels_md5_block(m->h, m->block);
    }
}

static void
parallels_md5_final(struct parallels_md5 *m, uint8_t out[16])
{
    uint64_t bits = m->n_bytes * 8;
    uint8_t pad = 0x80, len[8];

    parallels_md5_update(m, &pad, 1);
    while (m->n_bytes % 64 != 56)
        parallels_md5_update(m, NULL, 1);
    for (int i = 0; i < 8; i++)
        len[i] = (uint8_t)(bits >> (8 * i));
    parallels_md5_update(m, len, 8);
    for (int i = 0; i < 16; i++)
        out[i] = (uint8_t)(m->h[i / 4] >> (8 * (i % 4)));
}

/*
 * The Format Extension cluster as far as it lies inside the file; the rest
 * reads as zeros, so the allocation is bounded by the file size.
 */
struct parallels_ext {
    uint8_t *data;
    uint64_t n_stored;
    uint64_t size;              /* the cluster size */
};

/* Copies [offset, +len) of the cluster, zeros past the stored part. */
static void
parallels_ext_get(const struct parallels_ext *x, uint64_t offset, void *out, size_t len)
{
    uint64_t n = offset >= x->n_stored ? 0 : x->n_stored - offset;

    if (n > len)
        n = len;
    if (n)
        memcpy(out, x->data + offset, (size_t)n);
    memset((uint8_t *)out + n, 0, len - n);
}

static int
parallels_check_checksum(const struct parallels_ext *x, struct vimg_error *err)
{
    struct parallels_md5 m;
    uint8_t want[16], got[16];

    parallels_ext_get(x, PARALLELS_EXT_OFF_CHECKSUM, want, sizeof(want));
    parallels_md5_init(&m);
    if (x->n_stored > PARALLELS_EXT_HEADER_SIZE)
        parallels_md5_update(&m, x->data + PARALLELS_EXT_HEADER_SIZE,
                             x->n_stored - PARALLELS_EXT_HEADER_SIZE);
    parallels_md5_update(&m, NULL, x->size - (x->n_stored > PARALLELS_EXT_HEADER_SIZE
                                              ? x->n_stored : PARALLELS_EXT_HEADER_SIZE));
    parallels_md5_final(&m, got);
    if (memcmp(want, got, sizeof(got)) != 0)
        return vimg_error_set(err, EINVAL, "Wrong checksum in Format Extension header. Format "
                              "extension is corrupted.");
    return 0;
}

static int
parallels_check_bitmap(const struct parallels_state *s, const struct parallels_ext *x,
                       uint64_t pos, uint32_t data_size, struct vimg_error *err)
{
    uint8_t b[PARALLELS_BITMAP_HEADER_SIZE];
    uint64_t size, bits, bytes, expected;
    uint32_t granularity, l1_size;

    if (data_size < PARALLELS_BITMAP_HEADER_SIZE)
        return vimg_error_set(err, EINVAL, "Too small Bitmap Feature area in Parallels Format "
                              "Extension: %" PRIu32 " bytes, expected at least %d bytes",
                              data_size, PARALLELS_BITMAP_HEADER_SIZE);
    parallels_ext_get(x, pos, b, sizeof(b));
    size = parallels_le64(b + PARALLELS_BITMAP_OFF_SIZE);
    granularity = parallels_le32(b + PARALLELS_BITMAP_OFF_GRANULARITY);
    l1_size = parallels_le32(b + PARALLELS_BITMAP_OFF_L1_SIZE);
    if (size != s->n_sectors)
        return vimg_error_set(err, EINVAL, "Bitmap size (in sectors) %" PRIu64 " differs from "
                              "disk size in sectors %" PRIu64, size, s->n_sectors);
    /* qemu-img asserts here; vimg refuses the image. */
    if (granularity == 0 || (granularity & (granularity - 1)))
        return vimg_error_set(err, EINVAL, "Bitmap granularity %" PRIu32 " (in sectors) is not "
                              "a power of two", granularity);
    if ((uint64_t)l1_size * 8 > data_size - PARALLELS_BITMAP_HEADER_SIZE)
        return vimg_error_set(err, EINVAL, "Bitmaps feature corrupted: l1 table exceeds "
                              "extension data_size");
    bits = size / granularity + (size % granularity != 0);
    bytes = (bits + 63) / 64 * 8;
    expected = bytes / s->cluster_size + (bytes % s->cluster_size != 0);
    if (l1_size != expected)
        return vimg_error_set(err, EINVAL, "Bitmap table size %" PRIu32 " does not correspond "
                              "to bitmap size and cluster size. Expected %" PRIu64,
                              l1_size, expected);
    return 0;
}

/* Walks the feature headers; pos and sizes stay inside the cluster. */
static int
parallels_check_features(const struct parallels_state *s, const struct parallels_ext *x,
                         struct vimg_error *err)
{
    uint64_t pos = PARALLELS_EXT_HEADER_SIZE;
    uint8_t h[PARALLELS_FEAT_HEADER_SIZE];
    int ret;

    while (pos + PARALLELS_FEAT_HEADER_SIZE <= x->size) {
        uint64_t magic, flags;
        uint32_t data_size;

        parallels_ext_get(x, pos, h, sizeof(h));
        magic = parallels_le64(h + PARALLELS_FEAT_OFF_MAGIC);
        flags = parallels_le64(h + PARALLELS_FEAT_OFF_FLAGS);
        data_size = parallels_le32(h + PARALLELS_FEAT_OFF_SIZE);
        if (magic == PARALLELS_FEAT_END)
            return 0;
        if (flags)
            return vimg_error_set(err, ENOTSUP, "Flags for extension feature are unsupported");
        pos += PARALLELS_FEAT_HEADER_SIZE;
        if (data_size > x->size - pos)
            return vimg_error_set(err, EINVAL, "Feature data_size exceedes Format Extension "
                                  "cluster");
        if (magic != PARALLELS_FEAT_DIRTY_BITMAP)
            return vimg_error_set(err, ENOTSUP, "Unknown feature: 0x%" PRIx64, magic);
        if ((ret = parallels_check_bitmap(s, x, pos, data_size, err)) < 0)
            return ret;
        pos += (data_size + UINT64_C(7)) / 8 * 8;
    }
    return vimg_error_set(err, EINVAL, "Format Extension has no end-of-features marker");
}

static int
parallels_check_extension(struct vimg_node *node, uint64_t ext_off, struct vimg_error *err)
{
    struct parallels_state *s = node->state;
    struct parallels_ext x = { .size = s->cluster_size };
    uint64_t offset;
    uint8_t magic[8];
    int ret;

    if (__builtin_mul_overflow(ext_off, PARALLELS_SECTOR_SIZE, &offset))
        offset = UINT64_MAX;
    if ((ret = parallels_in_file(node, offset, x.size, &x.n_stored, err)) < 0)
        return ret;
    if (!(x.data = malloc(x.n_stored + 1)))
        return vimg_error_set(err, ENOMEM, "Out of memory");
    if ((ret = vimg_node_pread_padded(node->file, offset, x.data, x.n_stored, err)) < 0)
        goto out;
    parallels_ext_get(&x, PARALLELS_EXT_OFF_MAGIC, magic, sizeof(magic));
    if (parallels_le64(magic) != PARALLELS_EXT_MAGIC) {
        ret = vimg_error_set(err, EINVAL, "Wrong parallels Format Extension magic: 0x%" PRIx64
                             ", expected: 0x%" PRIx64, parallels_le64(magic),
                             PARALLELS_EXT_MAGIC);
        goto out;
    }
    if ((ret = parallels_check_checksum(&x, err)) == 0)
        ret = parallels_check_features(s, &x, err);
out:
    free(x.data);
    return ret;
}

/* Loads the part of the BAT inside the file; entries past its end are 0. */
static int
parallels_load_bat(struct vimg_node *node, struct vimg_error *err)
{
    struct parallels_state *s = node->state;
    uint64_t bytes = (uint64_t)s->n_bat * 4, in_file = 0;
    uint8_t *raw;
    int ret;

    if (PARALLELS_HEADER_SIZE + bytes > PARALLELS_MAX_READ)
        return vimg_error_set(err, EIO, "Could not open '%s': Input/output error",
                              node->filename);
    if ((ret = parallels_in_file(node, PARALLELS_HEADER_SIZE, bytes, &in_file, err)) < 0)
        return ret;
    s->n_stored = (in_file + 3) / 4;
    raw = malloc(s->n_stored * 4 + 1);
    s->bat = malloc(s->n_stored * sizeof(*s->bat) + 1);
    if (!raw || !s->bat) {
        free(raw);
        return vimg_error_set(err, ENOMEM, "Out of memory");
    }
    ret = vimg_node_pread_padded(node->file, PARALLELS_HEADER_SIZE, raw, s->n_stored * 4, err);
    for (uint64_t i = 0; ret == 0 && i < s->n_stored; i++)
        s->bat[i] = parallels_le32(raw + i * 4);
    free(raw);
    return ret;
}

static void
parallels_close(struct vimg_node *node)
{
    struct parallels_state *s = node->state;

    free(s->bat);
    s->bat = NULL;
}

/* The checks and their order are qemu-img's, so that the messages match. */
static int
parallels_open(struct vimg_node *node, struct vimg_opts *opts, unsigned flags,
               struct vimg_error *err)
{
    struct parallels_state *s = node->state;
    uint8_t h[PARALLELS_HEADER_SIZE];
    uint32_t tracks;
    uint64_t ext_off;
    int version, ret;

    (void)opts;
    (void)flags;
    if ((ret = vimg_node_pread_padded(node->file, 0, h, sizeof(h), err)) < 0)
        return ret;
    if (!(version = parallels_header_version(h)))
        return vimg_error_set(err, EINVAL, "Image not in Parallels format");
    tracks = parallels_le32(h + PARALLELS_OFF_TRACKS);
    if (tracks == 0)
        return vimg_error_set(err, EINVAL, "Invalid image: Zero sectors per track");
    if (tracks > PARALLELS_MAX_TRACKS)
        return vimg_error_set(err, EFBIG, "Invalid image: Too big cluster");
    s->cluster_size = (uint64_t)tracks * PARALLELS_SECTOR_SIZE;
    s->bat_unit = version == 1 ? PARALLELS_SECTOR_SIZE : s->cluster_size;
    s->n_sectors = parallels_le64(h + PARALLELS_OFF_NB_SECTORS);
    if (version == 1)
        s->n_sectors &= UINT32_MAX;
    s->n_bat = parallels_le32(h + PARALLELS_OFF_BAT_ENTRIES);
    if (s->n_bat > PARALLELS_MAX_BAT_ENTRIES)
        return vimg_error_set(err, EFBIG, "Catalog too large");
    if ((ret = parallels_load_bat(node, err)) < 0)
        goto fail;
    ext_off = parallels_le64(h + PARALLELS_OFF_EXT_OFF);
    if (ext_off && (ret = parallels_check_extension(node, ext_off, err)) < 0)
        goto fail;
    if (s->n_sectors > PARALLELS_MAX_SECTORS) {
        ret = vimg_error_set(err, EFBIG, "Could not refresh total sector count: File too large");
        goto fail;
    }
    node->request_alignment = PARALLELS_SECTOR_SIZE;
    return 0;
fail:
    parallels_close(node);
    return ret;
}

static int64_t
parallels_length(struct vimg_node *node, struct vimg_error *err)
{
    struct parallels_state *s = node->state;

    (void)err;
    return (int64_t)(s->n_sectors * PARALLELS_SECTOR_SIZE);
}

/* The file offset of the cluster holding offset, or 0 when it is not allocated. */
static uint64_t
parallels_host_cluster(const struct parallels_state *s, uint64_t offset)
{
    uint64_t index = offset / s->cluster_size, host;

    if (index >= s->n_bat || index >= s->n_stored || s->bat[index] == 0)
        return 0;
    if (__builtin_mul_overflow((uint64_t)s->bat[index], s->bat_unit, &host))
        return UINT64_MAX - s->cluster_size;    /* far past the end: reads zeros */
    return host;
}

static int
parallels_read(struct vimg_node *node, uint64_t offset, uint8_t *out, uint64_t bytes,
               struct vimg_error *err)
{
    struct parallels_state *s = node->state;

    while (bytes) {
        uint64_t in_cluster = offset % s->cluster_size;
        uint64_t len = s->cluster_size - in_cluster < bytes ? s->cluster_size - in_cluster
                                                            : bytes;
        uint64_t host = parallels_host_cluster(s, offset);
        int ret;

        if (host == 0)
            memset(out, 0, len);
        else if ((ret = vimg_node_pread_padded(node->file, host + in_cluster, out, len, err)) < 0)
            return ret;
        offset += len;
        out += len;
        bytes -= len;
    }
    return 0;
}

/*
 * A run of unallocated clusters, or of allocated ones that follow each other
 * in the file too.
 */
static int
parallels_block_status(struct vimg_node *node, uint64_t offset, uint64_t bytes,
                       struct vimg_block_status *bs, struct vimg_error *err)
{
    struct parallels_state *s = node->state;
    uint64_t host = parallels_host_cluster(s, offset);
    uint64_t run = s->cluster_size - offset % s->cluster_size;

    (void)err;
    while (run < bytes) {
        uint64_t next = parallels_host_cluster(s, offset + run);
        if (host == 0 ? next != 0 : next != host + offset % s->cluster_size + run)
            break;
        run += s->cluster_size;
    }
    bs->bytes = run < bytes ? run : bytes;
    bs->flags = 0;
    if (host) {
        bs->flags = VIMG_BS_DATA | VIMG_BS_ALLOCATED | VIMG_BS_OFFSET_VALID;
        bs->offset = host + offset % s->cluster_size;
        bs->file = node->file;
    }
    return 0;
}

const struct vimg_driver vimg_parallels_driver = {
    .name = "parallels",
    .kind = VIMG_DRIVER_FORMAT,
    .lacks_get_info = true,
    .state_size = sizeof(struct parallels_state),
    .probe = parallels_probe,
    .open = parallels_open,
    .close = parallels_close,
    .pread = parallels_read,
    .block_status = parallels_block_status,
    .length = parallels_length,
};
