/*
 * The vdi format (VirtualBox), read-write with create and check: the 1.1
 * header at 0x40, the block map of LE32 entries (SPECS.md, "VDI"), 1 MiB
 * blocks. Layout and limits are those of images qemu-img 7.2 writes, so
 * both tools accept the same files with the same messages.
 *
 * Blocks mapped to the discarded-block marker read as zeros and are
 * allocated anew when written. Discard, zero writes and `check -r` behave as
 * in qemu-img, whose vdi driver has none of them: discard does nothing, zeros
 * are written as data, and `check -r` is refused.
 *
 * Left out: differencing images (a parent or link UUID is refused, as in
 * qemu-img).
 */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "core/driver.h"

#define VDI_SECTOR_SIZE         512
#define VDI_HEADER_SIZE         512     /* the header sector, text included */
#define VDI_BLOCK_SIZE          UINT32_C(1048576)
#define VDI_SIGNATURE           UINT32_C(0xbeda107f)
#define VDI_VERSION_1_1         UINT32_C(0x00010001)
#define VDI_HEADER_SIZE_1_1     UINT32_C(0x180)
#define VDI_TYPE_DYNAMIC        1
#define VDI_TYPE_STATIC         2
#define VDI_UNALLOCATED         UINT32_C(0xffffffff)
#define VDI_DISCARDED           UINT32_C(0xfffffffe)  /* reads as zeros */
#define VDI_TEXT                "<<< QEMU VM Virtual Disk Image >>>\n"

/* Limits as qemu-img 7.2 enforces them. */
#define VDI_MAX_BLOCKS          UINT32_C(536870784)     /* (INT32_MAX - 511) / 4 */
#define VDI_MAX_SIZE            ((uint64_t)VDI_MAX_BLOCKS * VDI_BLOCK_SIZE)

/* Header field offsets. */
#define VDI_OFF_TEXT            0x000   /* char[64] */
#define VDI_OFF_SIGNATURE       0x040   /* LE32 */
#define VDI_OFF_VERSION         0x044   /* LE32, major << 16 | minor */
#define VDI_OFF_HEADER_SIZE     0x048   /* LE32 */
#define VDI_OFF_IMAGE_TYPE      0x04c   /* LE32 */
#define VDI_OFF_OFFSET_BMAP     0x154   /* LE32 */
#define VDI_OFF_OFFSET_DATA     0x158   /* LE32 */
#define VDI_OFF_SECTOR_SIZE     0x168   /* LE32 */
#define VDI_OFF_DISK_SIZE       0x170   /* LE64 */
#define VDI_OFF_BLOCK_SIZE      0x178   /* LE32 */
#define VDI_OFF_BLOCKS_IN_IMAGE 0x180   /* LE32 */
#define VDI_OFF_BLOCKS_ALLOC    0x184   /* LE32 */
#define VDI_OFF_UUID_IMAGE      0x188   /* 16 bytes */
#define VDI_OFF_UUID_LAST_SNAP  0x198
#define VDI_OFF_UUID_LINK       0x1a8
#define VDI_OFF_UUID_PARENT     0x1b8

struct vdi_header {
    uint32_t signature;
    uint32_t version;
    uint32_t offset_bmap;
    uint32_t offset_data;
    uint32_t sector_size;
    uint64_t disk_size;
    uint32_t block_size;
    uint32_t blocks_in_image;
    uint32_t blocks_allocated;
    bool has_link;                  /* uuid_link is not all zeros */
    bool has_parent;                /* uuid_parent is not all zeros */
};

struct vdi_state {
    uint8_t header[VDI_HEADER_SIZE];    /* as read, rewritten with blocks_allocated */
    struct vdi_header h;
    uint32_t *bmap;                 /* the n_stored first entries; later ones read as 0 */
    uint32_t n_stored;
    pthread_mutex_t lock;           /* protects bmap, h.blocks_allocated and header */
};

static uint32_t
vdi_le32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t
vdi_le64(const uint8_t *p)
{
    return (uint64_t)vdi_le32(p) | (uint64_t)vdi_le32(p + 4) << 32;
}

static void
vdi_put_le32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static void
vdi_put_le64(uint8_t *p, uint64_t v)
{
    vdi_put_le32(p, (uint32_t)v);
    vdi_put_le32(p + 4, (uint32_t)(v >> 32));
}

static bool
vdi_is_null_uuid(const uint8_t *p)
{
    for (int i = 0; i < 16; i++)
        if (p[i])
            return false;
    return true;
}

static void
vdi_decode_header(const uint8_t *b, struct vdi_header *h)
{
    h->signature = vdi_le32(b + VDI_OFF_SIGNATURE);
    h->version = vdi_le32(b + VDI_OFF_VERSION);
    h->offset_bmap = vdi_le32(b + VDI_OFF_OFFSET_BMAP);
    h->offset_data = vdi_le32(b + VDI_OFF_OFFSET_DATA);
    h->sector_size = vdi_le32(b + VDI_OFF_SECTOR_SIZE);
    h->disk_size = vdi_le64(b + VDI_OFF_DISK_SIZE);
    h->block_size = vdi_le32(b + VDI_OFF_BLOCK_SIZE);
    h->blocks_in_image = vdi_le32(b + VDI_OFF_BLOCKS_IN_IMAGE);
    h->blocks_allocated = vdi_le32(b + VDI_OFF_BLOCKS_ALLOC);
    h->has_link = !vdi_is_null_uuid(b + VDI_OFF_UUID_LINK);
    h->has_parent = !vdi_is_null_uuid(b + VDI_OFF_UUID_PARENT);
}

static int
vdi_probe(const uint8_t *buf, size_t len, const char *filename)
{
    (void)filename;
    if (len < VDI_OFF_SIGNATURE + 4)
        return 0;
    return vdi_le32(buf + VDI_OFF_SIGNATURE) == VDI_SIGNATURE ? 100 : 0;
}

/* The checks and their order are qemu-img's, so that the messages match. */
static int
vdi_check_header(const struct vdi_header *h, struct vimg_error *err)
{
    uint64_t size = (h->disk_size + VDI_SECTOR_SIZE - 1) / VDI_SECTOR_SIZE * VDI_SECTOR_SIZE;

    if (h->signature != VDI_SIGNATURE)
        return vimg_error_set(err, EINVAL, "Image not in VDI format (bad signature %08" PRIx32
                              ")", h->signature);
    if (h->version != VDI_VERSION_1_1)
        return vimg_error_set(err, ENOTSUP, "unsupported VDI image (version %" PRIu32 ".%"
                              PRIu32 ")", h->version >> 16, h->version & 0xffff);
    if (h->disk_size > VDI_MAX_SIZE)
        return vimg_error_set(err, ENOTSUP, "Unsupported VDI image size (size is 0x%" PRIx64
                              ", max supported is 0x%" PRIx64 ")", h->disk_size, VDI_MAX_SIZE);
    if (h->offset_bmap % VDI_SECTOR_SIZE)
        return vimg_error_set(err, ENOTSUP, "unsupported VDI image (unaligned block map offset "
                              "0x%" PRIx32 ")", h->offset_bmap);
    if (h->offset_data % VDI_SECTOR_SIZE)
        return vimg_error_set(err, ENOTSUP, "unsupported VDI image (unaligned data offset 0x%"
                              PRIx32 ")", h->offset_data);
    if (h->sector_size != VDI_SECTOR_SIZE)
        return vimg_error_set(err, ENOTSUP, "unsupported VDI image (sector size %" PRIu32
                              " is not %d)", h->sector_size, VDI_SECTOR_SIZE);
    if (h->block_size != VDI_BLOCK_SIZE)
        return vimg_error_set(err, ENOTSUP, "unsupported VDI image (block size %" PRIu32
                              " is not %" PRIu32 ")", h->block_size, VDI_BLOCK_SIZE);
    if (size > (uint64_t)h->blocks_in_image * VDI_BLOCK_SIZE)
        return vimg_error_set(err, ENOTSUP, "unsupported VDI image (disk size %" PRIu64
                              ", image bitmap has room for %" PRIu64 ")", size,
                              (uint64_t)h->blocks_in_image * VDI_BLOCK_SIZE);
    if (h->has_link)
        return vimg_error_set(err, ENOTSUP, "unsupported VDI image (non-NULL link UUID)");
    if (h->has_parent)
        return vimg_error_set(err, ENOTSUP, "unsupported VDI image (non-NULL parent UUID)");
    if (h->blocks_in_image > VDI_MAX_BLOCKS)
        return vimg_error_set(err, ENOTSUP, "unsupported VDI image (too many blocks %" PRIu32
                              ", max is %" PRIu32 ")", h->blocks_in_image, VDI_MAX_BLOCKS);
    return 0;
}

/*
 * Loads the part of the block map inside the file, so that a huge
 * blocks_in_image cannot size an allocation; entries past the end read as 0,
 * as they do in qemu-img.
 */
static int
vdi_load_bmap(struct vimg_node *node, struct vimg_error *err)
{
    struct vdi_state *s = node->state;
    uint64_t bytes = (uint64_t)s->h.blocks_in_image * 4, in_file;
    int64_t file_len = vimg_node_length(node->file, err);
    uint8_t *raw;
    int ret;

    if (file_len < 0)
        return (int)file_len;
    in_file = s->h.offset_bmap >= (uint64_t)file_len ? 0 : (uint64_t)file_len - s->h.offset_bmap;
    if (in_file > bytes)
        in_file = bytes;
    s->n_stored = (uint32_t)((in_file + 3) / 4);
    raw = malloc((size_t)s->n_stored * 4 + 1);
    s->bmap = malloc((size_t)s->n_stored * sizeof(*s->bmap) + 1);
    if (!raw || !s->bmap) {
        free(raw);
        return vimg_error_set(err, ENOMEM, "Out of memory");
    }
    ret = vimg_node_pread_padded(node->file, s->h.offset_bmap, raw, (uint64_t)s->n_stored * 4,
                                 err);
    for (uint32_t i = 0; ret == 0 && i < s->n_stored; i++)
        s->bmap[i] = vdi_le32(raw + (size_t)i * 4);
    free(raw);
    return ret;
}

static void
vdi_close(struct vimg_node *node)
{
    struct vdi_state *s = node->state;

    free(s->bmap);
    s->bmap = NULL;
    pthread_mutex_destroy(&s->lock);
}

static int
vdi_open(struct vimg_node *node, struct vimg_opts *opts, unsigned flags,
         struct vimg_error *err)
{
    struct vdi_state *s = node->state;
    int ret;

    (void)opts;
    (void)flags;
    if ((ret = vimg_node_pread_padded(node->file, 0, s->header, VDI_HEADER_SIZE, err)) < 0)
        return ret;
    vdi_decode_header(s->header, &s->h);
    if ((ret = vdi_check_header(&s->h, err)) < 0)
        return ret;
    pthread_mutex_init(&s->lock, NULL);
    if ((ret = vdi_load_bmap(node, err)) < 0) {
        vdi_close(node);
        return ret;
    }
    node->request_alignment = VDI_SECTOR_SIZE;
    node->cluster_size = VDI_BLOCK_SIZE;
    return 0;
}

static int64_t
vdi_length(struct vimg_node *node, struct vimg_error *err)
{
    struct vdi_state *s = node->state;

    (void)err;
    return (int64_t)((s->h.disk_size + VDI_SECTOR_SIZE - 1) / VDI_SECTOR_SIZE * VDI_SECTOR_SIZE);
}

static uint32_t
vdi_entry(const struct vdi_state *s, uint64_t index)
{
    return index < s->n_stored ? s->bmap[index] : 0;
}

static bool
vdi_is_allocated(uint32_t entry)
{
    return entry != VDI_UNALLOCATED && entry != VDI_DISCARDED;
}

static uint64_t
vdi_host_offset(const struct vdi_state *s, uint32_t entry)
{
    return s->h.offset_data + (uint64_t)entry * VDI_BLOCK_SIZE;
}

static int
vdi_read(struct vimg_node *node, uint64_t offset, uint8_t *out, uint64_t bytes,
         struct vimg_error *err)
{
    struct vdi_state *s = node->state;

    while (bytes) {
        uint64_t in_block = offset % VDI_BLOCK_SIZE;
        uint64_t len = VDI_BLOCK_SIZE - in_block < bytes ? VDI_BLOCK_SIZE - in_block : bytes;
        uint32_t entry;
        int ret;

        pthread_mutex_lock(&s->lock);
        entry = vdi_entry(s, offset / VDI_BLOCK_SIZE);
        pthread_mutex_unlock(&s->lock);
        if (!vdi_is_allocated(entry))
            memset(out, 0, len);
        else if ((ret = vimg_node_pread_padded(node->file, vdi_host_offset(s, entry) + in_block,
                                               out, len, err)) < 0)
            return ret;
        offset += len;
        out += len;
        bytes -= len;
    }
    return 0;
}

/*
 * Allocates block index as the next block of the data area, the way qemu-img
 * numbers them (blocks_allocated). The block's data, padded with zeros,
 * reaches the disk before the block map entry and the header: a crash in
 * between leaks the space instead of mapping a block to garbage.
 */
static int
vdi_alloc_block(struct vimg_node *node, uint64_t index, uint64_t in_block, const uint8_t *data,
                uint64_t len, struct vimg_error *err)
{
    struct vdi_state *s = node->state;
    uint32_t entry = s->h.blocks_allocated;
    uint8_t *block, raw[4];
    int ret;

    if (entry >= s->h.blocks_in_image)
        return vimg_error_set(err, EIO, "blocks_allocated %" PRIu32 " is not below "
                              "blocks_in_image %" PRIu32, entry, s->h.blocks_in_image);
    if (!(block = calloc(1, VDI_BLOCK_SIZE)))
        return vimg_error_set(err, ENOMEM, "Out of memory");
    memcpy(block + in_block, data, len);
    ret = vimg_node_pwrite(node->file, vdi_host_offset(s, entry), block, VDI_BLOCK_SIZE, 0, err);
    free(block);
    if (ret == 0)
        ret = vimg_node_flush(node->file, err);
    if (ret < 0)
        return ret;
    vdi_put_le32(raw, entry);
    if ((ret = vimg_node_pwrite(node->file, s->h.offset_bmap + index * 4, raw, 4, 0, err)) < 0)
        return ret;
    s->bmap[index] = entry;
    s->h.blocks_allocated = entry + 1;
    vdi_put_le32(s->header + VDI_OFF_BLOCKS_ALLOC, s->h.blocks_allocated);
    return vimg_node_pwrite(node->file, VDI_OFF_BLOCKS_ALLOC, s->header + VDI_OFF_BLOCKS_ALLOC,
                            4, 0, err);
}

static int
vdi_write_block(struct vimg_node *node, uint64_t offset, const uint8_t *data, uint64_t len,
                struct vimg_error *err)
{
    struct vdi_state *s = node->state;
    uint64_t index = offset / VDI_BLOCK_SIZE, in_block = offset % VDI_BLOCK_SIZE;
    uint32_t entry;
    int ret;

    pthread_mutex_lock(&s->lock);
    entry = vdi_entry(s, index);
    if (!vdi_is_allocated(entry)) {
        /* Entries past the stored part read as 0, which is allocated. */
        ret = vdi_alloc_block(node, index, in_block, data, len, err);
        pthread_mutex_unlock(&s->lock);
        return ret;
    }
    pthread_mutex_unlock(&s->lock);
    return vimg_node_pwrite(node->file, vdi_host_offset(s, entry) + in_block, data, len, 0, err);
}

static int
vdi_pwritev(struct vimg_node *node, uint64_t offset, uint64_t bytes, const struct iovec *iov,
            int n_iov, unsigned flags, struct vimg_error *err)
{
    uint8_t *buf, *p;
    int ret = 0;

    (void)flags;
    if (!(buf = malloc(bytes ? bytes : 1)))
        return vimg_error_set(err, ENOMEM, "Out of memory");
    p = buf;
    for (int i = 0; i < n_iov; i++) {
        uint64_t n = iov[i].iov_len < bytes - (uint64_t)(p - buf) ? iov[i].iov_len
                                                                  : bytes - (uint64_t)(p - buf);
        memcpy(p, iov[i].iov_base, n);
        p += n;
    }
    for (uint64_t done = 0; done < bytes && ret == 0;) {
        uint64_t pos = offset + done;
        uint64_t len = VDI_BLOCK_SIZE - pos % VDI_BLOCK_SIZE;

        if (len > bytes - done)
            len = bytes - done;
        ret = vdi_write_block(node, pos, buf + done, len, err);
        done += len;
    }
    free(buf);
    return ret;
}

static int
vdi_flush(struct vimg_node *node, struct vimg_error *err)
{
    return vimg_node_flush(node->file, err);
}

/* An allocated block alone, or a run of blocks that read as zeros. */
static int
vdi_block_status(struct vimg_node *node, uint64_t offset, uint64_t bytes,
                 struct vimg_block_status *bs, struct vimg_error *err)
{
    struct vdi_state *s = node->state;
    uint64_t run = VDI_BLOCK_SIZE - offset % VDI_BLOCK_SIZE;
    uint32_t entry;

    (void)err;
    pthread_mutex_lock(&s->lock);
    entry = vdi_entry(s, offset / VDI_BLOCK_SIZE);
    if (vdi_is_allocated(entry)) {
        bs->flags = VIMG_BS_DATA | VIMG_BS_ALLOCATED | VIMG_BS_OFFSET_VALID;
        bs->offset = vdi_host_offset(s, entry) + offset % VDI_BLOCK_SIZE;
        bs->file = node->file;
    } else {
        while (run < bytes && !vdi_is_allocated(vdi_entry(s, (offset + run) / VDI_BLOCK_SIZE)))
            run += VDI_BLOCK_SIZE;
        bs->flags = VIMG_BS_ZERO | VIMG_BS_ALLOCATED;
    }
    pthread_mutex_unlock(&s->lock);
    bs->bytes = run < bytes ? run : bytes;
    return 0;
}

/*
 * qemu-img's checks: entries past blocks_in_image, data blocks used twice
 * and a wrong blocks_allocated are corruptions; nothing is repaired.
 */
static int
vdi_check(struct vimg_node *node, int fix, struct vimg_check_result *result,
          struct vimg_error *err)
{
    struct vdi_state *s = node->state;
    uint32_t n_blocks = s->h.blocks_in_image, n_allocated = 0;
    uint8_t *used;                  /* one bit per data block */

    if (fix)
        return vimg_error_set(err, ENOTSUP, "This image format does not support checks");
    if (!(used = calloc((size_t)n_blocks / 8 + 1, 1)))
        return vimg_error_set(err, ENOMEM, "Out of memory");
    for (uint32_t i = 0; i < n_blocks; i++) {
        uint32_t entry = vdi_entry(s, i);

        /* Past the stored map every entry reads as block 0: count them at once. */
        if (i >= s->n_stored && n_blocks > 0 && (used[0] & 1)) {
            n_allocated += n_blocks - i;
            result->corruptions += n_blocks - i;
            break;
        }

        if (!vdi_is_allocated(entry))
            continue;
        n_allocated++;
        if (entry >= n_blocks) {
            vimg_warn("ERROR: block index %" PRIu32 " too large, is %" PRIu32, i, entry);
            result->corruptions++;
        } else if (used[entry / 8] & (1u << (entry % 8))) {
            vimg_warn("ERROR: block index %" PRIu32 " also used by %" PRIu32, entry, entry);
            result->corruptions++;
        } else {
            used[entry / 8] |= (uint8_t)(1u << (entry % 8));
        }
    }
    free(used);
    if (n_allocated != s->h.blocks_allocated) {
        vimg_warn("ERROR: allocated blocks mismatch, is %" PRIu32 ", should be %" PRIu32,
                  n_allocated, s->h.blocks_allocated);
        result->corruptions++;
    }
    return 0;
}

/* Creation */

static const struct vimg_opt_desc vdi_create_opts[] = {
    { "size", VIMG_OPT_SIZE, "Virtual disk size", NULL },
    { "static", VIMG_OPT_BOOL, "VDI static (pre-allocated) image", "off" },
    { NULL, 0, NULL, NULL },
};

static int
vdi_encode_header(uint8_t *b, uint64_t size, uint32_t n_blocks, uint32_t offset_data,
                  bool is_static, struct vimg_error *err)
{
    memset(b, 0, VDI_HEADER_SIZE);
    memcpy(b + VDI_OFF_TEXT, VDI_TEXT, strlen(VDI_TEXT));
    vdi_put_le32(b + VDI_OFF_SIGNATURE, VDI_SIGNATURE);
    vdi_put_le32(b + VDI_OFF_VERSION, VDI_VERSION_1_1);
    vdi_put_le32(b + VDI_OFF_HEADER_SIZE, VDI_HEADER_SIZE_1_1);
    vdi_put_le32(b + VDI_OFF_IMAGE_TYPE, is_static ? VDI_TYPE_STATIC : VDI_TYPE_DYNAMIC);
    vdi_put_le32(b + VDI_OFF_OFFSET_BMAP, VDI_SECTOR_SIZE);
    vdi_put_le32(b + VDI_OFF_OFFSET_DATA, offset_data);
    vdi_put_le32(b + VDI_OFF_SECTOR_SIZE, VDI_SECTOR_SIZE);
    vdi_put_le64(b + VDI_OFF_DISK_SIZE, size);
    vdi_put_le32(b + VDI_OFF_BLOCK_SIZE, VDI_BLOCK_SIZE);
    vdi_put_le32(b + VDI_OFF_BLOCKS_IN_IMAGE, n_blocks);
    vdi_put_le32(b + VDI_OFF_BLOCKS_ALLOC, is_static ? n_blocks : 0);
    if (getrandom(b + VDI_OFF_UUID_IMAGE, 32, 0) != 32)
        return vimg_error_set_errno(err, errno, "Could not generate a UUID");
    for (int i = 0; i < 2; i++) {
        uint8_t *u = b + VDI_OFF_UUID_IMAGE + 16 * i;
        u[7] = (uint8_t)((u[7] & 0x0f) | 0x40);     /* version 4, stored little-endian */
        u[8] = (uint8_t)((u[8] & 0x3f) | 0x80);
    }
    return 0;
}

/* Header sector, then the block map padded to a sector; static maps every block. */
static int
vdi_write_new(struct vimg_node *file, uint64_t size, bool is_static, struct vimg_error *err)
{
    uint32_t n_blocks = (uint32_t)((size + VDI_BLOCK_SIZE - 1) / VDI_BLOCK_SIZE);
    uint64_t bmap_bytes = ((uint64_t)n_blocks * 4 + VDI_SECTOR_SIZE - 1) /
                          VDI_SECTOR_SIZE * VDI_SECTOR_SIZE;
    uint64_t offset_data = VDI_SECTOR_SIZE + bmap_bytes;
    uint64_t end = offset_data + (is_static ? (uint64_t)n_blocks * VDI_BLOCK_SIZE : 0);
    uint8_t *buf;
    int ret;

    if (!(buf = calloc(1, offset_data)))
        return vimg_error_set(err, ENOMEM, "Out of memory");
    ret = vdi_encode_header(buf, size, n_blocks, (uint32_t)offset_data, is_static, err);
    for (uint32_t i = 0; i < n_blocks; i++)
        vdi_put_le32(buf + VDI_SECTOR_SIZE + (size_t)i * 4, is_static ? i : VDI_UNALLOCATED);
    if (ret == 0)
        ret = vimg_node_truncate(file, end, false, NULL, err);
    if (ret == 0)
        ret = vimg_node_pwrite(file, 0, buf, offset_data, 0, err);
    free(buf);
    return ret;
}

static int
vdi_create(const char *filename, struct vimg_opts *opts, struct vimg_error *err)
{
    struct vimg_node *file;
    uint64_t size;
    bool is_static;
    int ret;

    if ((ret = vimg_opts_get_bool(opts, "static", false, &is_static, err)) < 0)
        return ret;
    if (!vimg_opts_has(opts, "size"))
        return vimg_error_set(err, EINVAL, "Image creation needs a size parameter");
    if ((ret = vimg_opts_get_size(opts, "size", 0, &size, err)) < 0)
        return ret;
    if ((ret = vimg_create_file_empty(filename, opts, err)) < 0)
        return ret;
    /* qemu-img checks the size once the file exists, and leaves it behind. */
    if (size % VDI_SECTOR_SIZE &&
        __builtin_add_overflow(size, VDI_SECTOR_SIZE - size % VDI_SECTOR_SIZE, &size))
        size = UINT64_MAX - VDI_SECTOR_SIZE + 1;
    if (size > VDI_MAX_SIZE)
        return vimg_error_set(err, ENOTSUP, "Unsupported VDI image size (size is 0x%" PRIx64
                              ", max supported is 0x%" PRIx64 ")", size, VDI_MAX_SIZE);
    ret = vimg_open(&file, filename, NULL, NULL, VIMG_OPEN_RDWR | VIMG_OPEN_PROTOCOL, err);
    if (ret < 0)
        return ret;
    ret = vdi_write_new(file, size, is_static, err);
    if (ret == 0)
        ret = vimg_node_flush(file, err);
    vimg_close(file);
    return ret;
}

const struct vimg_driver vimg_vdi_driver = {
    .name = "vdi",
    .kind = VIMG_DRIVER_FORMAT,
    .state_size = sizeof(struct vdi_state),
    .has_zero_init = true,
    .probe = vdi_probe,
    .open = vdi_open,
    .close = vdi_close,
    .create_opts = vdi_create_opts,
    .create = vdi_create,
    .pread = vdi_read,
    .pwritev = vdi_pwritev,
    .flush = vdi_flush,
    .block_status = vdi_block_status,
    .check = vdi_check,
    .length = vdi_length,
};
