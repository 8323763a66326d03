/*
 * The bochs format, read-only: Bochs "growing" redolog images as bximage
 * writes them (header version 2) and the older version 1 header. There is no
 * written spec; the samples in testdata/ and bximage are the ground truth
 * (SPECS.md, "bochs").
 *
 * Layout: a header, the catalog (one LE32 extent index per virtual extent,
 * 0xffffffff = not allocated) at header_size, then the allocated extents from
 * header_size + 4 * catalog on. Each extent is a bitmap (one bit per sector,
 * least significant bit first, padded to whole sectors) followed by the
 * extent's data; a clear bit reads as zeros.
 *
 * Left out: writing, and the "flat", "sparse" and "undoable" Bochs types.
 * Bytes past the end of the file read as zeros, as they do in qemu-img.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "core/driver.h"

#define BOCHS_SECTOR_SIZE       512
#define BOCHS_HEADER_SIZE       512

/* Header field offsets. */
#define BOCHS_OFF_MAGIC         0       /* char[32], NUL-terminated */
#define BOCHS_OFF_TYPE          32      /* char[16] */
#define BOCHS_OFF_SUBTYPE       48      /* char[16] */
#define BOCHS_OFF_VERSION       64      /* LE32 */
#define BOCHS_OFF_HEADER_SIZE   68      /* LE32, where the catalog starts */
#define BOCHS_OFF_CATALOG       72      /* LE32, number of catalog entries */
#define BOCHS_OFF_BITMAP        76      /* LE32, bitmap bytes per extent */
#define BOCHS_OFF_EXTENT        80      /* LE32, data bytes per extent */
#define BOCHS_OFF_V1_DISK       84      /* LE64 in version 1 headers */
#define BOCHS_OFF_V2_DISK       88      /* LE64 in version 2 (after a LE32 timestamp) */

#define BOCHS_MAGIC             "Bochs Virtual HD Image"
#define BOCHS_TYPE_REDOLOG      "Redolog"
#define BOCHS_SUBTYPE_GROWING   "Growing"
#define BOCHS_VERSION_1         0x00010000u
#define BOCHS_VERSION_2         0x00020000u

#define BOCHS_UNALLOCATED       0xffffffffu
/* Limits as qemu-img 7.2 enforces them. */
#define BOCHS_MAX_CATALOG       0x100000u
#define BOCHS_MAX_EXTENT        0x800000u
#define BOCHS_MAX_TRANSFER      (16u << 20)

struct bochs_header {
    uint32_t version;
    uint32_t header_size;
    uint32_t catalog;
    uint32_t bitmap;
    uint32_t extent;
    uint64_t disk;
};

struct bochs_state {
    uint32_t *catalog;          /* catalog entries, host order */
    uint32_t n_catalog;
    uint32_t extent_size;       /* data bytes per extent */
    uint64_t bitmap_bytes;      /* bitmap area before each extent's data, whole sectors */
    uint64_t data_offset;       /* file offset of extent 0 */
    uint64_t size;              /* virtual size, whole sectors */
};

static uint32_t
bochs_le32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t
bochs_le64(const uint8_t *p)
{
    return (uint64_t)bochs_le32(p) | (uint64_t)bochs_le32(p + 4) << 32;
}

/* Compares a NUL-terminated field of at most len bytes with s. */
static bool
bochs_field_is(const uint8_t *field, size_t len, const char *s)
{
    size_t n = strlen(s);

    return n < len && memcmp(field, s, n + 1) == 0;
}

static bool
bochs_header_matches(const uint8_t *buf)
{
    uint32_t version = bochs_le32(buf + BOCHS_OFF_VERSION);

    return bochs_field_is(buf + BOCHS_OFF_MAGIC, 32, BOCHS_MAGIC) &&
           bochs_field_is(buf + BOCHS_OFF_TYPE, 16, BOCHS_TYPE_REDOLOG) &&
           bochs_field_is(buf + BOCHS_OFF_SUBTYPE, 16, BOCHS_SUBTYPE_GROWING) &&
           (version == BOCHS_VERSION_1 || version == BOCHS_VERSION_2);
}

static int
bochs_probe(const uint8_t *buf, size_t len, const char *filename)
{
    (void)filename;
    if (len < BOCHS_HEADER_SIZE)
        return 0;
    return bochs_header_matches(buf) ? 100 : 0;
}

static void
bochs_decode_header(const uint8_t *buf, struct bochs_header *h)
{
    h->version = bochs_le32(buf + BOCHS_OFF_VERSION);
    h->header_size = bochs_le32(buf + BOCHS_OFF_HEADER_SIZE);
    h->catalog = bochs_le32(buf + BOCHS_OFF_CATALOG);
    h->bitmap = bochs_le32(buf + BOCHS_OFF_BITMAP);
    h->extent = bochs_le32(buf + BOCHS_OFF_EXTENT);
    h->disk = bochs_le64(buf + (h->version == BOCHS_VERSION_1 ? BOCHS_OFF_V1_DISK
                                                               : BOCHS_OFF_V2_DISK));
}

/* The checks and their order are qemu-img's, so that the messages match. */
static int
bochs_check_header(const struct bochs_header *h, struct vimg_error *err)
{
    uint64_t sectors = h->disk / BOCHS_SECTOR_SIZE;

    if (h->catalog > BOCHS_MAX_CATALOG)
        return vimg_error_set(err, EFBIG, "Catalog size is too large");
    if (h->extent < BOCHS_SECTOR_SIZE)
        return vimg_error_set(err, EINVAL, "Extent size must be at least 512");
    if (h->extent & (h->extent - 1))
        return vimg_error_set(err, EINVAL, "Extent size %" PRIu32 " is not a power of two",
                              h->extent);
    if (h->extent > BOCHS_MAX_EXTENT)
        return vimg_error_set(err, EINVAL, "Extent size %" PRIu32 " is too large", h->extent);
    if ((uint64_t)h->catalog * (h->extent / BOCHS_SECTOR_SIZE) < sectors)
        return vimg_error_set(err, EINVAL, "Catalog size is too small for this disk size");
    return 0;
}

static int
bochs_load_catalog(struct vimg_node *node, const struct bochs_header *h, struct vimg_error *err)
{
    struct bochs_state *s = node->state;
    uint8_t *raw;
    int ret;

    /* catalog <= BOCHS_MAX_CATALOG: at most 4 MiB. */
    raw = malloc((size_t)h->catalog * 4 + 1);
    s->catalog = malloc((size_t)h->catalog * sizeof(*s->catalog) + 1);
    if (!raw || !s->catalog) {
        free(raw);
        return vimg_error_set(err, ENOMEM, "Out of memory");
    }
    ret = vimg_node_pread_padded(node->file, h->header_size, raw, (uint64_t)h->catalog * 4, err);
    for (uint32_t i = 0; ret == 0 && i < h->catalog; i++)
        s->catalog[i] = bochs_le32(raw + (size_t)i * 4);
    free(raw);
    return ret;
}

static int
bochs_open(struct vimg_node *node, struct vimg_opts *opts, unsigned flags,
           struct vimg_error *err)
{
    struct bochs_state *s = node->state;
    uint8_t buf[BOCHS_HEADER_SIZE];
    struct bochs_header h;
    int ret;

    (void)opts;
    if (flags & VIMG_OPEN_RDWR)
        return vimg_error_set(err, EACCES, "Image is read-only");
    if ((ret = vimg_node_pread_padded(node->file, 0, buf, sizeof(buf), err)) < 0)
        return ret;
    if (!bochs_header_matches(buf))
        return vimg_error_set(err, EINVAL, "Image not in Bochs format");
    bochs_decode_header(buf, &h);
    if ((ret = bochs_check_header(&h, err)) < 0)
        return ret;
    if ((ret = bochs_load_catalog(node, &h, err)) < 0)
        goto fail;
    s->n_catalog = h.catalog;
    s->extent_size = h.extent;
    /* qemu-img's arithmetic: a bitmap of 0 bytes wraps to 2^23 sectors. */
    s->bitmap_bytes = ((uint64_t)((h.bitmap - 1) / BOCHS_SECTOR_SIZE) + 1) * BOCHS_SECTOR_SIZE;
    s->data_offset = (uint64_t)h.header_size + (uint64_t)h.catalog * 4;
    s->size = h.disk / BOCHS_SECTOR_SIZE * BOCHS_SECTOR_SIZE;
    node->request_alignment = BOCHS_SECTOR_SIZE;
    node->max_transfer = BOCHS_MAX_TRANSFER;
    return 0;
fail:
    free(s->catalog);
    s->catalog = NULL;
    return ret;
}

static void
bochs_close(struct vimg_node *node)
{
    struct bochs_state *s = node->state;

    free(s->catalog);
    s->catalog = NULL;
}

static int64_t
bochs_length(struct vimg_node *node, struct vimg_error *err)
{
    struct bochs_state *s = node->state;

    (void)err;
    return (int64_t)s->size;
}

/*
 * Reads the sectors [offset, +len) of one allocated extent into out: runs of
 * sectors whose bitmap bit is set come from the file, the others are zeros.
 */
static int
bochs_read_extent(struct vimg_node *node, uint64_t extent_offset, uint64_t offset, uint8_t *out,
                  uint64_t len, struct vimg_error *err)
{
    struct bochs_state *s = node->state;
    uint64_t first = offset / BOCHS_SECTOR_SIZE;
    uint64_t n = len / BOCHS_SECTOR_SIZE;
    uint64_t map_len = (first + n - 1) / 8 - first / 8 + 1;
    uint8_t *map = malloc(map_len);
    uint64_t i = 0;
    int ret;

    if (!map)
        return vimg_error_set(err, ENOMEM, "Out of memory");
    ret = vimg_node_pread_padded(node->file, extent_offset + first / 8, map, map_len, err);
    while (ret == 0 && i < n) {
        uint64_t sector = first + i;
        bool is_set = map[sector / 8 - first / 8] & (1u << (sector % 8));
        uint64_t run = 1;

        while (i + run < n &&
               !!(map[(sector + run) / 8 - first / 8] & (1u << ((sector + run) % 8))) == is_set)
            run++;
        if (is_set)
            ret = vimg_node_pread_padded(node->file, extent_offset + s->bitmap_bytes +
                                  sector * BOCHS_SECTOR_SIZE, out + i * BOCHS_SECTOR_SIZE,
                                  run * BOCHS_SECTOR_SIZE, err);
        else
            memset(out + i * BOCHS_SECTOR_SIZE, 0, run * BOCHS_SECTOR_SIZE);
        i += run;
    }
    free(map);
    return ret;
}

static int
bochs_read(struct vimg_node *node, uint64_t offset, uint8_t *out, uint64_t bytes,
           struct vimg_error *err)
{
    struct bochs_state *s = node->state;

    while (bytes) {
        uint64_t index = offset / s->extent_size;
        uint64_t in_extent = offset % s->extent_size;
        uint64_t len = s->extent_size - in_extent;
        uint32_t entry = index < s->n_catalog ? s->catalog[index] : BOCHS_UNALLOCATED;
        int ret;

        if (len > bytes)
            len = bytes;
        if (entry == BOCHS_UNALLOCATED) {
            memset(out, 0, len);
        } else {
            uint64_t extent_offset = s->data_offset +
                                     (uint64_t)entry * (s->bitmap_bytes + s->extent_size);
            if ((ret = bochs_read_extent(node, extent_offset, in_extent, out, len, err)) < 0)
                return ret;
        }
        offset += len;
        out += len;
        bytes -= len;
    }
    return 0;
}

const struct vimg_driver vimg_bochs_driver = {
    .name = "bochs",
    .kind = VIMG_DRIVER_FORMAT,
    .lacks_get_info = true,
    .state_size = sizeof(struct bochs_state),
    .probe = bochs_probe,
    .open = bochs_open,
    .close = bochs_close,
    .pread = bochs_read,
    .length = bochs_length,
};
