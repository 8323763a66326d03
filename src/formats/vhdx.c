/*
 * The vhdx format: Hyper-V VHDX images as in libyal/libvhdi "Virtual Hard
 * Disk version 2 (VHDX) image format" (SPECS.md, "VHDX"): the two headers
 * (CRC32C, sequence numbers), the region table, the metadata region (file
 * parameters, virtual disk size, sector sizes, page 83 data), the BAT with
 * its interleaved sector bitmap entries, and the log.
 *
 * A log left by a crash is replayed at a read-write open, then the headers
 * are rewritten without a log GUID; a read-only open of such an image is
 * refused with qemu-img 7.2's message. `check` reports a replay made at open
 * as one repaired corruption, and BAT entries outside the file or over the
 * log, BAT or metadata regions as corruptions, as qemu-img does (a plain
 * open refuses such an image).
 *
 * Creation lays images out as qemu-img 7.2 does (dynamic or fixed, ZERO or
 * NOT_PRESENT blocks, its block size choice and roundings). Writes put new
 * payload blocks at the end of the file; BAT changes reach the file only
 * through log entries (see "Writing"), so a crash leaves an image that a
 * read-write open (vimg's or qemu-img's) replays into a consistent one.
 *
 * Differencing images (HAS_PARENT) go beyond qemu-img 7.2, which refuses
 * them: the parent locator names the parent (relative_path, resolved against
 * the image's directory, else absolute_win32_path), which the core opens as
 * the backing node (format vhdx). NOT_PRESENT (and UNDEFINED) blocks come
 * from the parent, FULLY_PRESENT ones from this file, and PARTIALLY_PRESENT
 * ones sector by sector as the chunk's sector bitmap block says (bit set:
 * this file). They are read-only: writes are refused. The parent's
 * DataWriteGuid is not compared with parent_linkage.
 *
 * Left out: writing differencing images, resizing, discard. Like qemu-img
 * 7.2, images without a parent map every range as data.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <pthread.h>
#include <string.h>
#include <sys/random.h>

#include "core/driver.h"
#include "formats/vhd-parent.h"

#define VHDX_KIB                    UINT64_C(1024)
#define VHDX_MIB                    (VHDX_KIB * 1024)
#define VHDX_FILE_ID_MAGIC          "vhdxfile"

/* Headers: two 4 KiB copies at 64 KiB and 128 KiB (spec "Image header"). */
#define VHDX_HEADER1_OFFSET         (64 * VHDX_KIB)
#define VHDX_HEADER2_OFFSET         (128 * VHDX_KIB)
#define VHDX_HEADER_SIZE            4096
#define VHDX_HDR_OFF_SIGNATURE      0       /* "head" */
#define VHDX_HDR_OFF_CHECKSUM       4       /* LE32 CRC32C over the 4 KiB */
#define VHDX_HDR_OFF_SEQUENCE       8       /* LE64 */
#define VHDX_HDR_OFF_FILE_GUID      16      /* file write GUID */
#define VHDX_HDR_OFF_DATA_GUID      32      /* data write GUID */
#define VHDX_HDR_OFF_LOG_GUID       48
#define VHDX_HDR_OFF_LOG_VERSION    64      /* LE16 */
#define VHDX_HDR_OFF_VERSION        66      /* LE16 */
#define VHDX_HDR_OFF_LOG_LENGTH     68      /* LE32 */
#define VHDX_HDR_OFF_LOG_OFFSET     72      /* LE64 */

/* Region tables: 64 KiB at 192 KiB and 256 KiB (spec "Region table"). */
#define VHDX_REGION1_OFFSET         (192 * VHDX_KIB)
#define VHDX_REGION_SIZE            (64 * VHDX_KIB)
#define VHDX_RT_OFF_SIGNATURE       0       /* "regi" */
#define VHDX_RT_OFF_CHECKSUM        4
#define VHDX_RT_OFF_COUNT           8       /* LE32 */
#define VHDX_RT_HEADER_SIZE         16
#define VHDX_RT_ENTRY_SIZE          32
#define VHDX_RT_MAX_ENTRIES         2047
#define VHDX_RE_OFF_GUID            0
#define VHDX_RE_OFF_FILE_OFFSET     16      /* LE64 */
#define VHDX_RE_OFF_LENGTH          24      /* LE32 */
#define VHDX_RE_OFF_REQUIRED        28      /* LE32, bit 0 */

/* Metadata table (spec "Metadata region"). */
#define VHDX_MD_TABLE_SIZE          (64 * VHDX_KIB)
#define VHDX_MD_OFF_SIGNATURE       0       /* "metadata" */
#define VHDX_MD_OFF_COUNT           10      /* LE16 */
#define VHDX_MD_HEADER_SIZE         32
#define VHDX_MD_ENTRY_SIZE          32
#define VHDX_MD_MAX_ENTRIES         2047
#define VHDX_ME_OFF_GUID            0
#define VHDX_ME_OFF_OFFSET          16      /* LE32, from the region start */
#define VHDX_ME_OFF_LENGTH          20      /* LE32 */
#define VHDX_ME_OFF_FLAGS           24      /* LE32 */
#define VHDX_ME_FLAG_REQUIRED       4u
#define VHDX_FP_HAS_PARENT          2u      /* file parameters flags */
#define VHDX_PL_HEADER_SIZE         20      /* parent locator: type GUID, reserved, count */
#define VHDX_PL_OFF_COUNT           18      /* LE16 */
#define VHDX_PL_ENTRY_SIZE          12      /* key offset, value offset (LE32), lengths (LE16) */
#define VHDX_SB_BLOCK_PRESENT       6       /* sector bitmap BAT entry state */

/* Log (spec "Log"). */
#define VHDX_LOG_SECTOR_SIZE        4096
#define VHDX_LE_OFF_SIGNATURE       0       /* "loge" */
#define VHDX_LE_OFF_CHECKSUM        4       /* LE32 CRC32C over the entry */
#define VHDX_LE_OFF_LENGTH          8       /* LE32, a multiple of 4 KiB */
#define VHDX_LE_OFF_TAIL            12      /* LE32, offset of the oldest entry */
#define VHDX_LE_OFF_SEQUENCE        16      /* LE64 */
#define VHDX_LE_OFF_N_DESC          24      /* LE32 */
#define VHDX_LE_OFF_LOG_GUID        32
#define VHDX_LE_OFF_FLUSHED_OFFSET  48      /* LE64, the file size when written */
#define VHDX_LE_OFF_LAST_OFFSET     56      /* LE64, the file size it needs */
#define VHDX_LE_HEADER_SIZE         64
#define VHDX_LD_SIZE                32
#define VHDX_LD_OFF_SIGNATURE       0       /* "zero" or "desc" */
#define VHDX_LD_OFF_TRAILING        4       /* LE32 (data) */
#define VHDX_LD_OFF_LEADING         8       /* LE64 (data); zero length (zero) */
#define VHDX_LD_OFF_FILE_OFFSET     16      /* LE64 */
#define VHDX_LD_OFF_SEQUENCE        24      /* LE64 */
#define VHDX_DS_OFF_SEQ_HIGH        4       /* data sector, LE32 */
#define VHDX_DS_OFF_DATA            8
#define VHDX_DS_OFF_SEQ_LOW         4092    /* LE32 */

/* BAT entries: state in bits 0-2, file offset in MiB from bit 20. */
#define VHDX_BAT_STATE_MASK         UINT64_C(7)
#define VHDX_BAT_OFFSET_MASK        (~(VHDX_MIB - 1))
#define VHDX_PAYLOAD_NOT_PRESENT    0
#define VHDX_PAYLOAD_UNDEFINED      1
#define VHDX_PAYLOAD_ZERO           2
#define VHDX_PAYLOAD_UNMAPPED       3
#define VHDX_PAYLOAD_UNMAPPED_V095  5
#define VHDX_PAYLOAD_FULLY_PRESENT  6
#define VHDX_PAYLOAD_PARTIAL        7

#define VHDX_BAT_SECTOR_ENTRIES     (VHDX_LOG_SECTOR_SIZE / 8)
#define VHDX_MAX_SIZE               (UINT64_C(64) << 40)
#define VHDX_MAX_LOG_ENTRY          (32 * VHDX_MIB)

/* GUIDs as stored: the first three fields little-endian. */
static const uint8_t vhdx_guid_bat[16] = {
    0x66, 0x77, 0xc2, 0x2d, 0x23, 0xf6, 0x00, 0x42,
    0x9d, 0x64, 0x11, 0x5e, 0x9b, 0xfd, 0x4a, 0x08 };
static const uint8_t vhdx_guid_metadata[16] = {
    0x06, 0xa2, 0x7c, 0x8b, 0x90, 0x47, 0x9a, 0x4b,
    0xb8, 0xfe, 0x57, 0x5f, 0x05, 0x0f, 0x88, 0x6e };
static const uint8_t vhdx_guid_file_params[16] = {
    0x37, 0x67, 0xa1, 0xca, 0x36, 0xfa, 0x43, 0x4d,
    0xb3, 0xb6, 0x33, 0xf0, 0xaa, 0x44, 0xe7, 0x6b };
static const uint8_t vhdx_guid_disk_size[16] = {
    0x24, 0x42, 0xa5, 0x2f, 0x1b, 0xcd, 0x76, 0x48,
    0xb2, 0x11, 0x5d, 0xbe, 0xd8, 0x3b, 0xf4, 0xb8 };
static const uint8_t vhdx_guid_page83[16] = {
    0xab, 0x12, 0xca, 0xbe, 0xe6, 0xb2, 0x23, 0x45,
    0x93, 0xef, 0xc3, 0x09, 0xe0, 0x00, 0xc7, 0x46 };
static const uint8_t vhdx_guid_logical_sector[16] = {
    0x1d, 0xbf, 0x41, 0x81, 0x6f, 0xa9, 0x09, 0x47,
    0xba, 0x47, 0xf2, 0x33, 0xa8, 0xfa, 0xab, 0x5f };
static const uint8_t vhdx_guid_parent_locator[16] = {
    0x2d, 0x5f, 0xd3, 0xa8, 0x0b, 0xb3, 0x4d, 0x45,
    0xab, 0xf7, 0xd3, 0xd8, 0x48, 0x34, 0xab, 0x0c };
static const uint8_t vhdx_guid_locator_type_vhdx[16] = {
    0xb7, 0xef, 0x4a, 0xb0, 0x9e, 0xd1, 0x81, 0x4a,
    0xb7, 0x89, 0x25, 0xb8, 0xe9, 0x44, 0x59, 0x13 };
static const uint8_t vhdx_guid_physical_sector[16] = {
    0xc7, 0x48, 0xa3, 0xcd, 0x5d, 0x44, 0x71, 0x44,
    0x9c, 0xc9, 0xe9, 0x88, 0x52, 0x51, 0xc5, 0x56 };

struct vhdx_state {
    uint8_t header[VHDX_HEADER_SIZE];  /* the current header, as on disk */
    int header_index;                   /* 0 or 1: which copy is current */
    uint64_t bat_offset;
    uint64_t bat_length;
    uint64_t md_offset;                 /* the metadata region */
    uint64_t md_length;
    uint64_t size;                      /* virtual disk size */
    uint32_t block_size;
    uint32_t logical_sector_size;
    uint32_t physical_sector_size;
    uint64_t chunk_ratio;               /* payload blocks per sector bitmap block */
    bool is_differencing;               /* HAS_PARENT: the backing node is the parent */
    uint64_t n_bat;
    uint64_t *bat;                      /* the n_stored first entries */
    uint64_t n_stored;
    bool was_log_replayed;              /* at this open; check reports it */
    /* Writing: lock protects bat, n_stored, the dirty set, file_end and the log fields. */
    pthread_mutex_t lock;
    bool is_writable;
    bool has_written;                   /* headers carry this session's GUIDs */
    uint64_t file_end;                  /* where the next payload block goes */
    uint8_t *dirty;                     /* per 4 KiB sector of the BAT: changed, not logged */
    uint64_t n_dirty;
    uint64_t log_offset;
    uint64_t log_length;
    uint64_t log_head;                  /* where the next entry goes, from log_offset */
    uint64_t log_seq;                   /* sequence number of the next entry */
};

static uint16_t
vhdx_le16(const uint8_t *p)
{
    return (uint16_t)(p[0] | p[1] << 8);
}

static uint32_t
vhdx_le32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t
vhdx_le64(const uint8_t *p)
{
    return (uint64_t)vhdx_le32(p) | (uint64_t)vhdx_le32(p + 4) << 32;
}

static void
vhdx_put_le32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static void
vhdx_put_le64(uint8_t *p, uint64_t v)
{
    vhdx_put_le32(p, (uint32_t)v);
    vhdx_put_le32(p + 4, (uint32_t)(v >> 32));
}

/* CRC32C (Castagnoli, reflected), four bits at a time. */
static uint32_t
vhdx_crc32c_update(uint32_t crc, const uint8_t *p, size_t len)
{
    static const uint32_t nibble[16] = {
        0x00000000, 0x105ec76f, 0x20bd8ede, 0x30e349b1, 0x417b1dbc, 0x5125dad3,
        0x61c69362, 0x7198540d, 0x82f63b78, 0x92a8fc17, 0xa24bb5a6, 0xb21572c9,
        0xc38d26c4, 0xd3d3e1ab, 0xe330a81a, 0xf36e6f75,
    };

    for (size_t i = 0; i < len; i++) {
        crc ^= p[i];
        crc = (crc >> 4) ^ nibble[crc & 15];
        crc = (crc >> 4) ^ nibble[crc & 15];
    }
    return crc;
}

/* The checksum of buf with its 4-byte checksum field at checksum_off counted as zero. */
static uint32_t
vhdx_checksum(const uint8_t *buf, size_t len, size_t checksum_off)
{
    static const uint8_t zero[4];
    uint32_t crc = UINT32_MAX;

    crc = vhdx_crc32c_update(crc, buf, checksum_off);
    crc = vhdx_crc32c_update(crc, zero, 4);
    crc = vhdx_crc32c_update(crc, buf + checksum_off + 4, len - checksum_off - 4);
    return ~crc;
}

static bool
vhdx_checksum_ok(const uint8_t *buf, size_t len, size_t checksum_off)
{
    return vhdx_checksum(buf, len, checksum_off) == vhdx_le32(buf + checksum_off);
}

static bool
vhdx_guid_is_zero(const uint8_t *g)
{
    static const uint8_t zero[16];

    return memcmp(g, zero, 16) == 0;
}

static int
vhdx_probe(const uint8_t *buf, size_t len, const char *filename)
{
    (void)filename;
    return len >= 8 && memcmp(buf, VHDX_FILE_ID_MAGIC, 8) == 0 ? 100 : 0;
}

/*
 * qemu-img 7.2 gives no detail for most malformed metadata: it says "Could
 * not open 'FILE': " and the errno text. vimg says the same, so that the
 * output matches; the comment at each call names the condition.
 */
static int
vhdx_refuse(struct vimg_node *node, int errnum, struct vimg_error *err)
{
    return vimg_error_set(err, errnum, "Could not open '%s': %s", node->filename,
                          strerror(errnum));
}

/* Headers */

static bool
vhdx_header_is_valid(const uint8_t *h)
{
    return memcmp(h + VHDX_HDR_OFF_SIGNATURE, "head", 4) == 0 &&
           vhdx_checksum_ok(h, VHDX_HEADER_SIZE, VHDX_HDR_OFF_CHECKSUM);
}

/* Picks the valid header with the higher sequence number. */
static int
vhdx_read_headers(struct vimg_node *node, struct vimg_error *err)
{
    struct vhdx_state *s = node->state;
    uint8_t h[2][VHDX_HEADER_SIZE];
    bool ok[2];
    int ret;

    if ((ret = vimg_node_pread_padded(node->file, VHDX_HEADER1_OFFSET, h[0], VHDX_HEADER_SIZE,
                                      err)) < 0 ||
        (ret = vimg_node_pread_padded(node->file, VHDX_HEADER2_OFFSET, h[1], VHDX_HEADER_SIZE,
                                      err)) < 0)
        return ret;
    ok[0] = vhdx_header_is_valid(h[0]);
    ok[1] = vhdx_header_is_valid(h[1]);
    if (!ok[0] && !ok[1])
        return vimg_error_set(err, EINVAL, "No valid VHDX header found");
    s->header_index = !ok[0] || (ok[1] && vhdx_le64(h[1] + VHDX_HDR_OFF_SEQUENCE) >
                                 vhdx_le64(h[0] + VHDX_HDR_OFF_SEQUENCE));
    memcpy(s->header, h[s->header_index], VHDX_HEADER_SIZE);
    if (vhdx_le16(s->header + VHDX_HDR_OFF_VERSION) != 1)
        return vimg_error_set(err, ENOTSUP, "VHDX version %" PRIu16 " is not supported",
                              vhdx_le16(s->header + VHDX_HDR_OFF_VERSION));
    if (vhdx_le16(s->header + VHDX_HDR_OFF_LOG_VERSION) != 0)
        return vimg_error_set(err, ENOTSUP, "VHDX log version %" PRIu16 " is not supported",
                              vhdx_le16(s->header + VHDX_HDR_OFF_LOG_VERSION));
    return 0;
}

/*
 * Writes the current header, with a new sequence number, file write GUID and
 * the given log GUID, over the other copy; twice, so that both copies agree.
 */
static int
vhdx_update_headers(struct vimg_node *node, const uint8_t *log_guid, bool is_data_write,
                    struct vimg_error *err)
{
    struct vhdx_state *s = node->state;
    int ret;

    for (int i = 0; i < 2; i++) {
        uint8_t *h = s->header;
        int target = !s->header_index;

        vhdx_put_le64(h + VHDX_HDR_OFF_SEQUENCE, vhdx_le64(h + VHDX_HDR_OFF_SEQUENCE) + 1);
        if (i == 0 && (getrandom(h + VHDX_HDR_OFF_FILE_GUID, 16, 0) != 16 ||
                       (is_data_write && getrandom(h + VHDX_HDR_OFF_DATA_GUID, 16, 0) != 16)))
            return vimg_error_set_errno(err, errno, "Could not generate a GUID");
        memcpy(h + VHDX_HDR_OFF_LOG_GUID, log_guid, 16);
        vhdx_put_le32(h + VHDX_HDR_OFF_CHECKSUM,
                      vhdx_checksum(h, VHDX_HEADER_SIZE, VHDX_HDR_OFF_CHECKSUM));
        ret = vimg_node_pwrite(node->file, target ? VHDX_HEADER2_OFFSET : VHDX_HEADER1_OFFSET,
                               h, VHDX_HEADER_SIZE, 0, err);
        if (ret == 0)
            ret = vimg_node_flush(node->file, err);
        if (ret < 0)
            return ret;
        s->header_index = target;
    }
    return 0;
}

/* Region table */

static int
vhdx_parse_regions(struct vimg_node *node, const uint8_t *rt, struct vimg_error *err)
{
    struct vhdx_state *s = node->state;
    uint32_t n = vhdx_le32(rt + VHDX_RT_OFF_COUNT);
    bool has_bat = false, has_md = false;

    if (n > VHDX_RT_MAX_ENTRIES)
        return vhdx_refuse(node, EINVAL, err);    /* more than 2047 entries */
    for (uint32_t i = 0; i < n; i++) {
        const uint8_t *e = rt + VHDX_RT_HEADER_SIZE + (size_t)i * VHDX_RT_ENTRY_SIZE;
        uint64_t off = vhdx_le64(e + VHDX_RE_OFF_FILE_OFFSET);
        uint32_t len = vhdx_le32(e + VHDX_RE_OFF_LENGTH);

        if (memcmp(e + VHDX_RE_OFF_GUID, vhdx_guid_bat, 16) == 0 && !has_bat) {
            s->bat_offset = off;
            s->bat_length = len;
            has_bat = true;
        } else if (memcmp(e + VHDX_RE_OFF_GUID, vhdx_guid_metadata, 16) == 0 && !has_md) {
            s->md_offset = off;
            s->md_length = len;
            has_md = true;
        } else if (vhdx_le32(e + VHDX_RE_OFF_REQUIRED) & 1) {
            return vhdx_refuse(node, ENOTSUP, err);   /* an unknown required region */
        }
    }
    if (!has_bat || !has_md)
        return vhdx_refuse(node, EINVAL, err);    /* no BAT or no metadata region */
    return 0;
}

static int
vhdx_read_regions(struct vimg_node *node, struct vimg_error *err)
{
    uint8_t *rt = malloc(VHDX_REGION_SIZE);
    int ret = 0;

    if (!rt)
        return vimg_error_set(err, ENOMEM, "Out of memory");
    /* qemu-img reads the first region table only, and so does vimg. */
    ret = vimg_node_pread_padded(node->file, VHDX_REGION1_OFFSET, rt, VHDX_REGION_SIZE, err);
    if (ret == 0) {
        if (memcmp(rt + VHDX_RT_OFF_SIGNATURE, "regi", 4) == 0 &&
            vhdx_checksum_ok(rt, VHDX_REGION_SIZE, VHDX_RT_OFF_CHECKSUM))
            ret = vhdx_parse_regions(node, rt, err);
        else
            ret = vhdx_refuse(node, EINVAL, err);
    }
    free(rt);
    return ret;
}

/* Metadata */

struct vhdx_metadata {
    bool has_params, has_size, has_logical, has_physical, has_page83, has_locator;
    const uint8_t *locator;             /* the parent locator item, in the region buffer */
    uint32_t locator_len;
    uint32_t block_size;
    uint32_t params_flags;
    uint64_t size;
    uint32_t logical;
    uint32_t physical;
};

/* Copies item (offset, len) of the metadata region into out, which holds want bytes. */
static int
vhdx_metadata_item(struct vimg_node *node, const uint8_t *md, uint32_t offset, uint32_t len,
                   uint32_t want, const uint8_t **out, struct vimg_error *err)
{
    const struct vhdx_state *s = node->state;

    /* Too short, or outside the metadata region. */
    if (len < want || offset < VHDX_MD_TABLE_SIZE || offset > s->md_length ||
        want > s->md_length - offset)
        return vhdx_refuse(node, EINVAL, err);
    *out = md + offset;
    return 0;
}

/* Bytes of the metadata region from offset (inside it) to its end. */
static uint32_t
vhdx_md_room(struct vimg_node *node, uint32_t offset)
{
    const struct vhdx_state *s = node->state;

    return (uint32_t)(s->md_length - offset);
}

static int
vhdx_parse_metadata_entry(struct vimg_node *node, const uint8_t *md, const uint8_t *e,
                          struct vhdx_metadata *m, struct vimg_error *err)
{
    uint32_t off = vhdx_le32(e + VHDX_ME_OFF_OFFSET), len = vhdx_le32(e + VHDX_ME_OFF_LENGTH);
    const uint8_t *g = e + VHDX_ME_OFF_GUID, *p = NULL;
    int ret = 0;

    if (memcmp(g, vhdx_guid_file_params, 16) == 0 && !m->has_params) {
        if ((ret = vhdx_metadata_item(node, md, off, len, 8, &p, err)) == 0) {
            m->block_size = vhdx_le32(p);
            m->params_flags = vhdx_le32(p + 4);
            m->has_params = true;
        }
    } else if (memcmp(g, vhdx_guid_disk_size, 16) == 0 && !m->has_size) {
        if ((ret = vhdx_metadata_item(node, md, off, len, 8, &p, err)) == 0) {
            m->size = vhdx_le64(p);
            m->has_size = true;
        }
    } else if (memcmp(g, vhdx_guid_logical_sector, 16) == 0 && !m->has_logical) {
        if ((ret = vhdx_metadata_item(node, md, off, len, 4, &p, err)) == 0) {
            m->logical = vhdx_le32(p);
            m->has_logical = true;
        }
    } else if (memcmp(g, vhdx_guid_physical_sector, 16) == 0 && !m->has_physical) {
        if ((ret = vhdx_metadata_item(node, md, off, len, 4, &p, err)) == 0) {
            m->physical = vhdx_le32(p);
            m->has_physical = true;
        }
    } else if (memcmp(g, vhdx_guid_parent_locator, 16) == 0 && !m->has_locator) {
        if ((ret = vhdx_metadata_item(node, md, off, len, VHDX_PL_HEADER_SIZE, &p, err)) == 0) {
            m->has_locator = true;
            m->locator = p;
            /* vhdx_metadata_item checked that the header fits; the rest must too. */
            m->locator_len = len < vhdx_md_room(node, off) ? len : vhdx_md_room(node, off);
        }
    } else if (memcmp(g, vhdx_guid_page83, 16) == 0) {
        ret = vhdx_metadata_item(node, md, off, len, 16, &p, err);
        m->has_page83 = ret == 0;
    } else if (vhdx_le32(e + VHDX_ME_OFF_FLAGS) & VHDX_ME_FLAG_REQUIRED) {
        ret = vhdx_refuse(node, ENOTSUP, err);    /* an unknown required item */
    }
    return ret;
}

static int
vhdx_check_metadata(struct vimg_node *node, const struct vhdx_metadata *m,
                    struct vimg_error *err)
{
    struct vhdx_state *s = node->state;

    /* A required item missing. */
    if (!m->has_params || !m->has_size || !m->has_logical || !m->has_physical ||
        !m->has_page83)
        return vhdx_refuse(node, ENOTSUP, err);
    /* Block size: a power of two from 1 MiB to 256 MiB. */
    if (m->block_size < VHDX_MIB || m->block_size > 256 * VHDX_MIB ||
        (m->block_size & (m->block_size - 1)))
        return vhdx_refuse(node, EINVAL, err);
    /* Logical sector size: 512 or 4096; qemu-img does not check the physical one. */
    if (m->logical != 512 && m->logical != 4096)
        return vhdx_refuse(node, ENOTSUP, err);
    /* Disk size: at most 64 TiB. */
    if (m->size > VHDX_MAX_SIZE)
        return vhdx_refuse(node, EINVAL, err);
    s->block_size = m->block_size;
    s->logical_sector_size = m->logical;
    s->physical_sector_size = m->physical;
    s->size = m->size;
    s->chunk_ratio = (UINT64_C(1) << 23) * m->logical / m->block_size;
    return 0;
}

/* The value of key in the parent locator, UTF-8 (malloc'd), or NULL (*ret < 0 on errors). */
static char *
vhdx_locator_value(struct vimg_node *node, const struct vhdx_metadata *m, const char *key,
                   int *ret, struct vimg_error *err)
{
    const uint8_t *pl = m->locator;
    uint16_t n = vhdx_le16(pl + VHDX_PL_OFF_COUNT);

    *ret = 0;
    if (VHDX_PL_HEADER_SIZE + (uint64_t)n * VHDX_PL_ENTRY_SIZE > m->locator_len) {
        *ret = vimg_error_set(err, EINVAL, "Could not open '%s': the parent locator has %"
                              PRIu16 " entries, more than its %" PRIu32 " bytes hold",
                              node->filename, n, m->locator_len);
        return NULL;
    }
    for (uint16_t i = 0; i < n; i++) {
        const uint8_t *e = pl + VHDX_PL_HEADER_SIZE + (size_t)i * VHDX_PL_ENTRY_SIZE;
        uint32_t ko = vhdx_le32(e), vo = vhdx_le32(e + 4);
        uint16_t kl = vhdx_le16(e + 8), vl = vhdx_le16(e + 10);
        char *k, *v;

        if (ko > m->locator_len || kl > m->locator_len - ko || vo > m->locator_len ||
            vl > m->locator_len - vo) {
            *ret = vimg_error_set(err, EINVAL, "Could not open '%s': parent locator entry %"
                                  PRIu16 " lies outside the locator", node->filename, i);
            return NULL;
        }
        if (!(k = vhd_parent_utf16_to_utf8(pl + ko, kl, false)))
            continue;
        if (strcmp(k, key) != 0) {
            free(k);
            continue;
        }
        free(k);
        if (!(v = vhd_parent_utf16_to_utf8(pl + vo, vl, false))) {
            *ret = vimg_error_set(err, EINVAL, "Could not open '%s': parent locator value of "
                                  "%s is not valid UTF-16", node->filename, key);
            return NULL;
        }
        vhd_parent_path_to_host(v);
        return v;
    }
    return NULL;
}

/* The parent: relative_path if it exists, else absolute_win32_path, else relative_path. */
static int
vhdx_find_parent(struct vimg_node *node, const struct vhdx_metadata *m, struct vimg_error *err)
{
    struct vhdx_state *s = node->state;
    char *rel, *abs_path = NULL, *chosen;
    int ret;

    /* qemu-img refuses every differencing image so; without a locator, so do we. */
    if (!m->has_locator)
        return vhdx_refuse(node, EINVAL, err);
    if (memcmp(m->locator, vhdx_guid_locator_type_vhdx, 16) != 0)
        return vimg_error_set(err, ENOTSUP, "Could not open '%s': the parent locator is not "
                              "of the VHDX type", node->filename);
    rel = vhdx_locator_value(node, m, "relative_path", &ret, err);
    if (ret == 0)
        abs_path = vhdx_locator_value(node, m, "absolute_win32_path", &ret, err);
    if (ret < 0) {
        free(rel);
        return ret;
    }
    if (rel && *rel && (vhd_parent_exists(node->filename, rel) || !abs_path || !*abs_path)) {
        chosen = rel;
        free(abs_path);
    } else {
        chosen = abs_path;
        free(rel);
    }
    if (!chosen || !*chosen) {
        free(chosen);
        return vimg_error_set(err, EINVAL, "Could not open '%s': the parent locator names no "
                              "relative_path or absolute_win32_path", node->filename);
    }
    if (vhd_parent_is_self(node->filename, chosen)) {
        ret = vimg_error_set(err, ELOOP, "Could not open '%s': the differencing VHDX names "
                             "itself as its parent ('%s')", node->filename, chosen);
        free(chosen);
        return ret;
    }
    node->backing_filename = chosen;
    if (!(node->backing_format = strdup("vhdx")))
        return vimg_error_set(err, ENOMEM, "Out of memory");
    s->is_differencing = true;
    return 0;
}

static int
vhdx_read_metadata(struct vimg_node *node, struct vimg_error *err)
{
    struct vhdx_state *s = node->state;
    struct vhdx_metadata m;
    int64_t file_len = vimg_node_length(node->file, err);
    uint8_t *md;
    uint16_t n;
    int ret;

    if (file_len < 0)
        return (int)file_len;
    if (s->md_length < VHDX_MD_TABLE_SIZE || s->md_offset > (uint64_t)file_len ||
        s->md_length > (uint64_t)file_len - s->md_offset)
        return vhdx_refuse(node, EINVAL, err);    /* the region is outside the file */
    if (!(md = malloc(s->md_length)))
        return vimg_error_set(err, ENOMEM, "Out of memory");
    if ((ret = vimg_node_pread(node->file, s->md_offset, md, s->md_length, 0, err)) < 0)
        goto out;
    n = vhdx_le16(md + VHDX_MD_OFF_COUNT);
    if (memcmp(md + VHDX_MD_OFF_SIGNATURE, "metadata", 8) != 0 || n > VHDX_MD_MAX_ENTRIES) {
        ret = vhdx_refuse(node, EINVAL, err);     /* signature or entry count */
        goto out;
    }
    memset(&m, 0, sizeof(m));
    for (uint16_t i = 0; i < n && ret == 0; i++)
        ret = vhdx_parse_metadata_entry(node, md, md + VHDX_MD_HEADER_SIZE +
                                        (size_t)i * VHDX_MD_ENTRY_SIZE, &m, err);
    if (ret == 0)
        ret = vhdx_check_metadata(node, &m, err);
    if (ret == 0 && (m.params_flags & VHDX_FP_HAS_PARENT))
        ret = vhdx_find_parent(node, &m, err);
out:
    free(md);
    return ret;
}

/* BAT */

/*
 * Loads the part of the BAT inside the file; entries past its end read as
 * "not present", so the allocation is bounded by the file size.
 */
static int
vhdx_load_bat(struct vimg_node *node, struct vimg_error *err)
{
    struct vhdx_state *s = node->state;
    uint64_t n_payload = (s->size + s->block_size - 1) / s->block_size, in_file;
    int64_t file_len = vimg_node_length(node->file, err);
    uint8_t *raw;
    int ret;

    if (file_len < 0)
        return (int)file_len;
    /* Without a parent, sector bitmap entries sit between chunks only; with one,
     * the last chunk has its sector bitmap entry too. */
    if (s->is_differencing)
        s->n_bat = (n_payload + s->chunk_ratio - 1) / s->chunk_ratio * (s->chunk_ratio + 1);
    else
        s->n_bat = n_payload ? n_payload + (n_payload - 1) / s->chunk_ratio : 0;
    if (s->n_bat * 8 > s->bat_length)
        return vhdx_refuse(node, EINVAL, err);    /* the BAT region is too small */
    in_file = s->bat_offset >= (uint64_t)file_len ? 0 : (uint64_t)file_len - s->bat_offset;
    s->n_stored = in_file / 8 < s->n_bat ? in_file / 8 : s->n_bat;
    raw = malloc(s->n_stored * 8 + 1);
    /* A writer keeps every entry: those past the end of the file are "not present". */
    s->bat = calloc(s->is_writable ? s->n_bat + 1 : s->n_stored + 1, sizeof(*s->bat));
    if (!raw || !s->bat) {
        free(raw);
        return vimg_error_set(err, ENOMEM, "Out of memory");
    }
    ret = s->n_stored ? vimg_node_pread(node->file, s->bat_offset, raw, s->n_stored * 8, 0, err)
                      : 0;
    for (uint64_t i = 0; ret == 0 && i < s->n_stored; i++)
        s->bat[i] = vhdx_le64(raw + 8 * i);
    free(raw);
    if (s->is_writable)
        s->n_stored = s->n_bat;
    return ret;
}

/* Log replay */

/* The log as found in the file, read whole: it is at most a few MiB. */
struct vhdx_log {
    uint8_t *data;
    uint64_t length;
    const uint8_t *guid;
};

/* Copies len bytes of the circular log from offset into out. */
static void
vhdx_log_get(const struct vhdx_log *log, uint64_t offset, uint8_t *out, uint64_t len)
{
    for (uint64_t i = 0; i < len; i++)
        out[i] = log->data[(offset + i) % log->length];
}

/*
 * Whether a valid entry of the log starts at offset: signature, length, log
 * GUID, checksum and the sequence number of every data sector. On success
 * *entry holds a malloc'd copy of it.
 */
static bool
vhdx_log_entry_at(const struct vhdx_log *log, uint64_t offset, uint8_t **entry)
{
    uint8_t h[VHDX_LE_HEADER_SIZE];
    uint64_t len, n_desc, desc_sectors, seq, n_data = 0;
    uint8_t *e;

    vhdx_log_get(log, offset, h, sizeof(h));
    len = vhdx_le32(h + VHDX_LE_OFF_LENGTH);
    n_desc = vhdx_le32(h + VHDX_LE_OFF_N_DESC);
    seq = vhdx_le64(h + VHDX_LE_OFF_SEQUENCE);
    desc_sectors = (VHDX_LE_HEADER_SIZE + n_desc * VHDX_LD_SIZE + VHDX_LOG_SECTOR_SIZE - 1) /
                   VHDX_LOG_SECTOR_SIZE;
    if (memcmp(h, "loge", 4) != 0 || len == 0 || len % VHDX_LOG_SECTOR_SIZE ||
        len > log->length || len > VHDX_MAX_LOG_ENTRY || desc_sectors * 4096 > len ||
        memcmp(h + VHDX_LE_OFF_LOG_GUID, log->guid, 16) != 0 || !(e = malloc(len)))
        return false;
    vhdx_log_get(log, offset, e, len);
    for (uint64_t i = 0; i < n_desc; i++) {
        const uint8_t *d = e + VHDX_LE_HEADER_SIZE + i * VHDX_LD_SIZE;
        bool is_data = memcmp(d, "desc", 4) == 0;
        const uint8_t *ds = e + (desc_sectors + n_data) * VHDX_LOG_SECTOR_SIZE;

        if ((!is_data && memcmp(d, "zero", 4) != 0) ||
            vhdx_le64(d + VHDX_LD_OFF_SEQUENCE) != seq ||
            (is_data && ((desc_sectors + n_data + 1) * VHDX_LOG_SECTOR_SIZE > len ||
                         memcmp(ds, "data", 4) != 0 ||
                         ((uint64_t)vhdx_le32(ds + VHDX_DS_OFF_SEQ_HIGH) << 32 |
                          vhdx_le32(ds + VHDX_DS_OFF_SEQ_LOW)) != seq)))
            goto bad;
        n_data += is_data;
    }
    if (!vhdx_checksum_ok(e, len, VHDX_LE_OFF_CHECKSUM))
        goto bad;
    *entry = e;
    return true;
bad:
    free(e);
    return false;
}

/* Applies one entry's descriptors to the file. */
static int
vhdx_log_apply(struct vimg_node *node, const uint8_t *e, struct vimg_error *err)
{
    uint64_t n_desc = vhdx_le32(e + VHDX_LE_OFF_N_DESC), n_data = 0;
    uint64_t desc_sectors = (VHDX_LE_HEADER_SIZE + n_desc * VHDX_LD_SIZE +
                             VHDX_LOG_SECTOR_SIZE - 1) / VHDX_LOG_SECTOR_SIZE;
    uint8_t sector[VHDX_LOG_SECTOR_SIZE];
    int ret = 0;

    for (uint64_t i = 0; i < n_desc && ret == 0; i++) {
        const uint8_t *d = e + VHDX_LE_HEADER_SIZE + i * VHDX_LD_SIZE;
        uint64_t off = vhdx_le64(d + VHDX_LD_OFF_FILE_OFFSET);

        if (memcmp(d, "zero", 4) == 0) {
            ret = vimg_node_pwrite_zeroes(node->file, off, vhdx_le64(d + VHDX_LD_OFF_LEADING),
                                          0, err);
            continue;
        }
        /* A data sector: the descriptor keeps its first 8 and last 4 bytes. */
        memcpy(sector, d + VHDX_LD_OFF_LEADING, 8);
        memcpy(sector + 8, e + (desc_sectors + n_data) * VHDX_LOG_SECTOR_SIZE +
               VHDX_DS_OFF_DATA, VHDX_DS_OFF_SEQ_LOW - VHDX_DS_OFF_DATA);
        memcpy(sector + VHDX_DS_OFF_SEQ_LOW, d + VHDX_LD_OFF_TRAILING, 4);
        ret = vimg_node_pwrite(node->file, off, sector, sizeof(sector), 0, err);
        n_data++;
    }
    return ret;
}

/*
 * Finds the active sequence: the valid entry with the highest sequence
 * number, and the entries from its tail to it with consecutive numbers.
 * *n_out = 0 when there is nothing to replay. offsets is malloc'd.
 */
static int
vhdx_log_find(const struct vhdx_log *log, uint64_t **offsets, uint64_t *n_out,
              struct vimg_error *err)
{
    uint64_t head = 0, head_seq = 0, tail, n = 0, max = log->length / VHDX_LOG_SECTOR_SIZE;
    uint8_t *e, t[4];

    *n_out = 0;
    *offsets = NULL;
    for (uint64_t off = 0; off < log->length; off += VHDX_LOG_SECTOR_SIZE) {
        if (!vhdx_log_entry_at(log, off, &e))
            continue;
        if (vhdx_le64(e + VHDX_LE_OFF_SEQUENCE) > head_seq) {
            head_seq = vhdx_le64(e + VHDX_LE_OFF_SEQUENCE);
            head = off;
        }
        free(e);
    }
    if (head_seq == 0)
        return 0;
    if (!(*offsets = malloc(max * sizeof(**offsets))))
        return vimg_error_set(err, ENOMEM, "Out of memory");
    vhdx_log_get(log, head + VHDX_LE_OFF_TAIL, t, sizeof(t));
    tail = vhdx_le32(t);
    for (uint64_t off = tail % log->length, seq = 0; n < max; n++) {
        if (!vhdx_log_entry_at(log, off, &e))
            break;
        if (n && vhdx_le64(e + VHDX_LE_OFF_SEQUENCE) != seq + 1) {
            free(e);
            break;
        }
        seq = vhdx_le64(e + VHDX_LE_OFF_SEQUENCE);
        (*offsets)[n] = off;
        off = (off + vhdx_le32(e + VHDX_LE_OFF_LENGTH)) % log->length;
        free(e);
        if (seq == head_seq) {
            *n_out = n + 1;
            return 0;
        }
    }
    /* The tail does not lead to the head: replay the head entry alone. */
    (*offsets)[0] = head;
    *n_out = 1;
    return 0;
}

static int
vhdx_log_replay(struct vimg_node *node, const struct vhdx_log *log, const uint64_t *offsets,
                uint64_t n, struct vimg_error *err)
{
    uint64_t last = 0;
    int64_t file_len;
    uint8_t *e;
    int ret = 0;

    for (uint64_t i = 0; i < n && ret == 0; i++) {
        if (!vhdx_log_entry_at(log, offsets[i], &e))
            return vimg_error_set(err, EIO, "VHDX log entry at 0x%" PRIx64 " changed",
                                  offsets[i]);
        if (vhdx_le64(e + VHDX_LE_OFF_LAST_OFFSET) > last)
            last = vhdx_le64(e + VHDX_LE_OFF_LAST_OFFSET);
        ret = vhdx_log_apply(node, e, err);
        free(e);
    }
    if (ret == 0)
        ret = vimg_node_flush(node->file, err);
    if (ret < 0)
        return ret;
    if ((file_len = vimg_node_length(node->file, err)) < 0)
        return (int)file_len;
    /* The file must be as long as the log says it was. */
    if (last > (uint64_t)file_len &&
        (ret = vimg_node_truncate(node->file, last, false, NULL, err)) < 0)
        return ret;
    return 0;
}

static int
vhdx_read_log(struct vimg_node *node, struct vhdx_log *log, struct vimg_error *err)
{
    struct vhdx_state *s = node->state;
    uint64_t off = vhdx_le64(s->header + VHDX_HDR_OFF_LOG_OFFSET);
    int64_t file_len = vimg_node_length(node->file, err);

    if (file_len < 0)
        return (int)file_len;
    log->length = vhdx_le32(s->header + VHDX_HDR_OFF_LOG_LENGTH);
    log->guid = s->header + VHDX_HDR_OFF_LOG_GUID;
    if (log->length == 0 || log->length % VHDX_MIB || off % VHDX_MIB ||
        off > (uint64_t)file_len || log->length > (uint64_t)file_len - off)
        return vimg_error_set(err, EINVAL, "VHDX log at 0x%" PRIx64 " (%" PRIu64 " bytes) is "
                              "outside the file (%" PRId64 " bytes)", off, log->length,
                              file_len);
    if (!(log->data = malloc(log->length)))
        return vimg_error_set(err, ENOMEM, "Out of memory");
    return vimg_node_pread(node->file, off, log->data, log->length, 0, err);
}

/* Replays the log when the header names one that holds entries. */
static int
vhdx_open_log(struct vimg_node *node, unsigned flags, struct vimg_error *err)
{
    struct vhdx_state *s = node->state;
    static const uint8_t zero_guid[16];
    struct vhdx_log log = { 0 };
    uint64_t *offsets = NULL, n = 0;
    int ret;

    if (vhdx_guid_is_zero(s->header + VHDX_HDR_OFF_LOG_GUID))
        return 0;
    if ((ret = vhdx_read_log(node, &log, err)) < 0 ||
        (ret = vhdx_log_find(&log, &offsets, &n, err)) < 0 || n == 0)
        goto out;
    if (!(flags & VIMG_OPEN_RDWR)) {
        ret = vimg_error_set(err, EPERM, "VHDX image file '%s' opened read-only, but contains "
                             "a log that needs to be replayed\nTo replay the log, run:\n"
                             "qemu-img check -r all '%s'", node->filename, node->filename);
        goto out;
    }
    if ((ret = vhdx_log_replay(node, &log, offsets, n, err)) == 0 &&
        (ret = vhdx_update_headers(node, zero_guid, false, err)) == 0)
        s->was_log_replayed = true;
out:
    free(offsets);
    free(log.data);
    return ret;
}

static int64_t
vhdx_length(struct vimg_node *node, struct vimg_error *err)
{
    (void)err;
    /* qemu-img counts whole sectors: a size that is not one is rounded down. */
    return (int64_t)(((struct vhdx_state *)node->state)->size & ~UINT64_C(511));
}

/* Points out[] at bytes [skip, skip + len) of iov; returns the count used. */
static int
vhdx_iov_slice(const struct iovec *iov, int n_iov, uint64_t skip, uint64_t len,
               struct iovec *out)
{
    int n = 0;

    for (int i = 0; i < n_iov && len; i++) {
        uint64_t take;
        if (skip >= iov[i].iov_len) {
            skip -= iov[i].iov_len;
            continue;
        }
        take = iov[i].iov_len - skip < len ? iov[i].iov_len - skip : len;
        out[n].iov_base = (uint8_t *)iov[i].iov_base + skip;
        out[n].iov_len = take;
        n++;
        len -= take;
        skip = 0;
    }
    return n;
}

/*
 * Differencing images: whether pos is in this file, and for how many bytes
 * (at most len, inside its block) that holds. A partially present block's
 * sector bitmap (LSB first: bit 0 of byte 0 is the chunk's first sector)
 * decides sector by sector.
 */
static int
vhdx_diff_run(struct vimg_node *node, uint64_t pos, uint64_t len, bool *in_file,
              uint64_t *run, struct vimg_error *err)
{
    struct vhdx_state *s = node->state;
    uint64_t block = pos / s->block_size, chunk = block / s->chunk_ratio;
    uint64_t index = block + chunk, sb_index = chunk * (s->chunk_ratio + 1) + s->chunk_ratio;
    uint64_t entry, sb, in_block = pos % s->block_size, first, last, sec, ls;
    uint8_t bits[4096];
    int ret, value;

    if (len > s->block_size - in_block)
        len = s->block_size - in_block;
    *run = len;
    if (s->is_writable)
        pthread_mutex_lock(&s->lock);
    entry = index < s->n_stored ? s->bat[index] : VHDX_PAYLOAD_NOT_PRESENT;
    sb = sb_index < s->n_stored ? s->bat[sb_index] : 0;
    if (s->is_writable)
        pthread_mutex_unlock(&s->lock);
    switch (entry & VHDX_BAT_STATE_MASK) {
    case VHDX_PAYLOAD_NOT_PRESENT:
    case VHDX_PAYLOAD_UNDEFINED:
        *in_file = false;
        return 0;
    case VHDX_PAYLOAD_PARTIAL:
        break;
    default:
        *in_file = true;
        return 0;
    }
    if ((sb & VHDX_BAT_STATE_MASK) != VHDX_SB_BLOCK_PRESENT)
        return vimg_error_set(err, EIO, "%s: block %" PRIu64 " is partially present but its "
                              "sector bitmap block is not", node->filename, block);
    ls = s->logical_sector_size;
    first = ((block % s->chunk_ratio) * s->block_size + in_block) / ls;
    last = ((block % s->chunk_ratio) * s->block_size + in_block + len - 1) / ls;
    if (last / 8 - first / 8 >= sizeof(bits))
        last = (first / 8 + sizeof(bits)) * 8 - 1;
    ret = vimg_node_pread_padded(node->file, (sb & VHDX_BAT_OFFSET_MASK) + first / 8, bits,
                                 last / 8 - first / 8 + 1, err);
    if (ret < 0)
        return ret;
#define VHDX_BIT(n) ((bits[(n) / 8 - first / 8] >> ((n) % 8)) & 1)
    value = VHDX_BIT(first);
    for (sec = first + 1; sec <= last && VHDX_BIT(sec) == value; sec++)
        ;
#undef VHDX_BIT
    sec -= first;   /* sectors in the run, counted from the one holding pos */
    if (sec * ls - in_block % ls < *run)
        *run = sec * ls - in_block % ls;
    *in_file = value;
    return 0;
}

/* Reads one piece inside a block into part[]. */
static int
vhdx_read_piece(struct vimg_node *node, uint64_t pos, uint64_t len, struct iovec *part, int n,
                struct vimg_error *err)
{
    struct vhdx_state *s = node->state;
    uint64_t block = pos / s->block_size;
    uint64_t index = block + block / s->chunk_ratio, entry, host, avail;
    int64_t file_len;

    /* Writers change the BAT under s->lock. */
    if (s->is_writable)
        pthread_mutex_lock(&s->lock);
    entry = index < s->n_stored ? s->bat[index] : VHDX_PAYLOAD_NOT_PRESENT;
    if (s->is_writable)
        pthread_mutex_unlock(&s->lock);
    host = (entry & VHDX_BAT_OFFSET_MASK) + pos % s->block_size;

    switch (entry & VHDX_BAT_STATE_MASK) {
    case VHDX_PAYLOAD_NOT_PRESENT:
    case VHDX_PAYLOAD_UNDEFINED:
    case VHDX_PAYLOAD_ZERO:
    case VHDX_PAYLOAD_UNMAPPED:
    case VHDX_PAYLOAD_UNMAPPED_V095:
        for (int i = 0; i < n; i++)
            memset(part[i].iov_base, 0, part[i].iov_len);
        return 0;
    case VHDX_PAYLOAD_FULLY_PRESENT:
    case VHDX_PAYLOAD_PARTIAL:
        break;
    default:
        return vimg_error_set(err, EIO, "VHDX BAT entry %" PRIu64 " has invalid state %" PRIu64,
                              block, entry & VHDX_BAT_STATE_MASK);
    }
    /* A block past the end of the file reads as zeros there. */
    if ((file_len = vimg_node_length(node->file, err)) < 0)
        return (int)file_len;
    avail = host >= (uint64_t)file_len ? 0 : (uint64_t)file_len - host;
    if (avail < len) {
        struct iovec *tail = part + n;
        int k = vhdx_iov_slice(part, n, avail, len - avail, tail);
        for (int i = 0; i < k; i++)
            memset(tail[i].iov_base, 0, tail[i].iov_len);
        if (avail == 0)
            return 0;
        n = vhdx_iov_slice(part, n, 0, avail, tail);
        memmove(part, tail, sizeof(*part) * (size_t)n);
        len = avail;
    }
    return vimg_node_preadv(node->file, host, len, part, n, 0, err);
}

/* Differencing images: sectors the parent holds read as zeros here (the core reads them). */
static int
vhdx_read_piece_diff(struct vimg_node *node, uint64_t pos, uint64_t len, struct iovec *part,
                     int n, struct vimg_error *err)
{
    /* Room for two more slices after part[n]. */
    struct iovec *sub = part + n;
    uint64_t done = 0;
    int ret = 0;

    while (done < len && ret == 0) {
        uint64_t run;
        bool in_file;
        int k;

        if ((ret = vhdx_diff_run(node, pos + done, len - done, &in_file, &run, err)) < 0)
            break;
        k = vhdx_iov_slice(part, n, done, run, sub);
        if (in_file) {
            ret = vhdx_read_piece(node, pos + done, run, sub, k, err);
        } else {
            for (int i = 0; i < k; i++)
                memset(sub[i].iov_base, 0, sub[i].iov_len);
        }
        done += run;
    }
    return ret;
}

static int
vhdx_preadv(struct vimg_node *node, uint64_t offset, uint64_t bytes, const struct iovec *iov,
            int n_iov, unsigned flags, struct vimg_error *err)
{
    struct vhdx_state *s = node->state;
    /* Room for four slices: the piece, a run of it, and in vhdx_read_piece a part of that. */
    struct iovec *part = malloc(4 * sizeof(*part) * (size_t)(n_iov > 0 ? n_iov : 1));
    uint64_t done = 0;
    int ret = 0;

    (void)flags;
    if (!part)
        return vimg_error_set(err, ENOMEM, "Out of memory");
    while (done < bytes && ret == 0) {
        uint64_t pos = offset + done;
        uint64_t len = s->block_size - pos % s->block_size;

        if (len > bytes - done)
            len = bytes - done;
        if (s->is_differencing)
            ret = vhdx_read_piece_diff(node, pos, len, part,
                                       vhdx_iov_slice(iov, n_iov, done, len, part), err);
        else
            ret = vhdx_read_piece(node, pos, len, part,
                                  vhdx_iov_slice(iov, n_iov, done, len, part), err);
        done += len;
    }
    free(part);
    return ret;
}


/* Writing */

/*
 * The BAT reaches its place in the file only through the log (spec "Log"):
 * payload data is flushed first, then one log entry holding the changed 4
 * KiB BAT sectors is written and flushed, then the sectors are written in
 * place and flushed. A crash leaves either the old BAT or a log entry that
 * the next read-write open replays. An entry takes at most half the log, so
 * writing one never tears the entry before it, which a replay may need.
 */


static uint64_t
vhdx_round_up(uint64_t v, uint64_t unit)
{
    return (v + unit - 1) / unit * unit;
}

/* Data sectors one log entry may hold, so that it fits in half the log. */
static uint64_t
vhdx_log_entry_capacity(const struct vhdx_state *s)
{
    uint64_t half = s->log_length / VHDX_LOG_SECTOR_SIZE / 2, n = half;

    while (n > 0 && (VHDX_LE_HEADER_SIZE + n * VHDX_LD_SIZE + VHDX_LOG_SECTOR_SIZE - 1) /
                    VHDX_LOG_SECTOR_SIZE + n > half)
        n--;
    return n;
}

/* The 4 KiB BAT sector at index, as it is in memory. */
static void
vhdx_encode_bat_sector(const struct vhdx_state *s, uint64_t index, uint8_t *out)
{
    memset(out, 0, VHDX_LOG_SECTOR_SIZE);
    for (uint64_t i = 0; i < VHDX_BAT_SECTOR_ENTRIES; i++) {
        uint64_t e = index * VHDX_BAT_SECTOR_ENTRIES + i;
        if (e < s->n_stored)
            vhdx_put_le64(out + 8 * i, s->bat[e]);
    }
}

/* Builds one log entry for the BAT sectors listed in sectors[n]; *len receives its size. */
static uint8_t *
vhdx_log_build_entry(struct vimg_node *node, const uint64_t *sectors, uint64_t n,
                     uint64_t *len, struct vimg_error *err)
{
    struct vhdx_state *s = node->state;
    uint64_t desc_sectors = (VHDX_LE_HEADER_SIZE + n * VHDX_LD_SIZE + VHDX_LOG_SECTOR_SIZE - 1) /
                            VHDX_LOG_SECTOR_SIZE;
    uint8_t sector[VHDX_LOG_SECTOR_SIZE], *e;

    *len = (desc_sectors + n) * VHDX_LOG_SECTOR_SIZE;
    if (!(e = calloc(1, *len))) {
        vimg_error_set(err, ENOMEM, "Out of memory");
        return NULL;
    }
    memcpy(e + VHDX_LE_OFF_SIGNATURE, "loge", 4);
    vhdx_put_le32(e + VHDX_LE_OFF_LENGTH, (uint32_t)*len);
    vhdx_put_le32(e + VHDX_LE_OFF_TAIL, (uint32_t)s->log_head);
    vhdx_put_le64(e + VHDX_LE_OFF_SEQUENCE, s->log_seq);
    vhdx_put_le32(e + VHDX_LE_OFF_N_DESC, (uint32_t)n);
    memcpy(e + VHDX_LE_OFF_LOG_GUID, s->header + VHDX_HDR_OFF_LOG_GUID, 16);
    vhdx_put_le64(e + VHDX_LE_OFF_FLUSHED_OFFSET, s->file_end);
    vhdx_put_le64(e + VHDX_LE_OFF_LAST_OFFSET, s->file_end);
    for (uint64_t i = 0; i < n; i++) {
        uint8_t *d = e + VHDX_LE_HEADER_SIZE + i * VHDX_LD_SIZE;
        uint8_t *ds = e + (desc_sectors + i) * VHDX_LOG_SECTOR_SIZE;

        vhdx_encode_bat_sector(s, sectors[i], sector);
        memcpy(d + VHDX_LD_OFF_SIGNATURE, "desc", 4);
        memcpy(d + VHDX_LD_OFF_TRAILING, sector + VHDX_DS_OFF_SEQ_LOW, 4);
        memcpy(d + VHDX_LD_OFF_LEADING, sector, 8);
        vhdx_put_le64(d + VHDX_LD_OFF_FILE_OFFSET,
                      s->bat_offset + sectors[i] * VHDX_LOG_SECTOR_SIZE);
        vhdx_put_le64(d + VHDX_LD_OFF_SEQUENCE, s->log_seq);
        memcpy(ds, "data", 4);
        vhdx_put_le32(ds + VHDX_DS_OFF_SEQ_HIGH, (uint32_t)(s->log_seq >> 32));
        memcpy(ds + VHDX_DS_OFF_DATA, sector + VHDX_DS_OFF_DATA,
               VHDX_DS_OFF_SEQ_LOW - VHDX_DS_OFF_DATA);
        vhdx_put_le32(ds + VHDX_DS_OFF_SEQ_LOW, (uint32_t)s->log_seq);
    }
    vhdx_put_le32(e + VHDX_LE_OFF_CHECKSUM, vhdx_checksum(e, *len, VHDX_LE_OFF_CHECKSUM));
    return e;
}

/* Writes entry at the log head, wrapping around the end of the log sector by sector. */
static int
vhdx_log_write_entry(struct vimg_node *node, const uint8_t *e, uint64_t len,
                     struct vimg_error *err)
{
    struct vhdx_state *s = node->state;
    int ret = 0;

    for (uint64_t done = 0; done < len && ret == 0;) {
        uint64_t room = s->log_length - s->log_head, n = len - done < room ? len - done : room;

        ret = vimg_node_pwrite(node->file, s->log_offset + s->log_head, e + done, n, 0, err);
        done += n;
        s->log_head = (s->log_head + n) % s->log_length;
    }
    return ret;
}

/* Logs, then writes in place, up to one entry's worth of dirty BAT sectors. */
static int
vhdx_commit_some(struct vimg_node *node, uint64_t *next, struct vimg_error *err)
{
    struct vhdx_state *s = node->state;
    uint64_t cap = vhdx_log_entry_capacity(s), n = 0, len, n_sectors;
    uint64_t *list = malloc(cap * sizeof(*list) + 1);
    uint8_t *e = NULL, sector[VHDX_LOG_SECTOR_SIZE];
    int ret;

    if (!list)
        return vimg_error_set(err, ENOMEM, "Out of memory");
    n_sectors = (s->n_bat + VHDX_BAT_SECTOR_ENTRIES - 1) / VHDX_BAT_SECTOR_ENTRIES;
    for (; *next < n_sectors && n < cap; (*next)++)
        if (s->dirty[*next])
            list[n++] = *next;
    ret = n ? 0 : vimg_error_set(err, EIO, "VHDX log too small for one BAT sector");
    if (ret == 0 && (e = vhdx_log_build_entry(node, list, n, &len, err)) == NULL)
        ret = -ENOMEM;
    if (ret == 0)
        ret = vhdx_log_write_entry(node, e, len, err);
    if (ret == 0)
        ret = vimg_node_flush(node->file, err);
    s->log_seq++;
    for (uint64_t i = 0; i < n && ret == 0; i++) {
        vhdx_encode_bat_sector(s, list[i], sector);
        ret = vimg_node_pwrite(node->file, s->bat_offset + list[i] * VHDX_LOG_SECTOR_SIZE,
                               sector, sizeof(sector), 0, err);
        s->dirty[list[i]] = 0;
        s->n_dirty--;
    }
    if (ret == 0)
        ret = vimg_node_flush(node->file, err);
    free(e);
    free(list);
    return ret;
}

/* Brings every changed BAT sector to the file through the log. Called with s->lock held. */
static int
vhdx_commit(struct vimg_node *node, struct vimg_error *err)
{
    struct vhdx_state *s = node->state;
    uint64_t next = 0;
    int ret;

    if (s->n_dirty == 0)
        return vimg_node_flush(node->file, err);
    /* The payload blocks the entries point at are on disk before the entries. */
    if ((ret = vimg_node_flush(node->file, err)) < 0)
        return ret;
    while (s->n_dirty && ret == 0)
        ret = vhdx_commit_some(node, &next, err);
    return ret;
}

/* First write of this open: new file and data write GUIDs, and a log GUID. */
static int
vhdx_begin_writes(struct vimg_node *node, struct vimg_error *err)
{
    struct vhdx_state *s = node->state;
    uint8_t guid[16];
    int ret;

    if (s->has_written)
        return 0;
    if (getrandom(guid, sizeof(guid), 0) != sizeof(guid))
        return vimg_error_set_errno(err, errno, "Could not generate a GUID");
    if ((ret = vhdx_update_headers(node, guid, true, err)) < 0)
        return ret;
    s->log_head = 0;
    s->log_seq = 1;
    s->has_written = true;
    return 0;
}

/* Gives block its payload block at the end of the file. Called with s->lock held. */
static int
vhdx_alloc_block(struct vimg_node *node, uint64_t index, uint64_t *host, struct vimg_error *err)
{
    struct vhdx_state *s = node->state;
    uint64_t off = vhdx_round_up(s->file_end, VHDX_MIB);
    int ret;

    if (off + s->block_size > VHDX_BAT_OFFSET_MASK)
        return vimg_error_set(err, EFBIG, "The VHDX file is full");
    /* The new block reads as zeros until written: it lies past the old end of the file. */
    if ((ret = vimg_node_truncate(node->file, off + s->block_size, false, NULL, err)) < 0)
        return ret;
    s->file_end = off + s->block_size;
    *host = off;
    s->bat[index] = off | VHDX_PAYLOAD_FULLY_PRESENT;
    if (!s->dirty[index / VHDX_BAT_SECTOR_ENTRIES]) {
        s->dirty[index / VHDX_BAT_SECTOR_ENTRIES] = 1;
        s->n_dirty++;
    }
    return 0;
}

/* Writes one piece inside a block. */
static int
vhdx_write_piece(struct vimg_node *node, uint64_t pos, uint64_t len, const struct iovec *part,
                 int n, struct vimg_error *err)
{
    struct vhdx_state *s = node->state;
    uint64_t block = pos / s->block_size;
    uint64_t index = block + block / s->chunk_ratio, host = 0, state;
    int ret = 0;

    pthread_mutex_lock(&s->lock);
    state = s->bat[index] & VHDX_BAT_STATE_MASK;
    if (state == VHDX_PAYLOAD_FULLY_PRESENT || state == VHDX_PAYLOAD_PARTIAL) {
        host = (s->bat[index] & VHDX_BAT_OFFSET_MASK) + pos % s->block_size;
        pthread_mutex_unlock(&s->lock);
        return vimg_node_pwritev(node->file, host, len, part, n, 0, err);
    }
    /* Allocating writes hold the lock, so that a second writer to the block waits. */
    if ((ret = vhdx_begin_writes(node, err)) == 0 &&
        (ret = vhdx_alloc_block(node, index, &host, err)) == 0)
        ret = vimg_node_pwritev(node->file, host + pos % s->block_size, len, part, n, 0, err);
    /* The log holds at most a few entries' worth of changes before they are committed. */
    if (ret == 0 && s->n_dirty >= 4 * vhdx_log_entry_capacity(s))
        ret = vhdx_commit(node, err);
    pthread_mutex_unlock(&s->lock);
    return ret;
}

static int
vhdx_pwritev(struct vimg_node *node, uint64_t offset, uint64_t bytes, const struct iovec *iov,
             int n_iov, unsigned flags, struct vimg_error *err)
{
    struct vhdx_state *s = node->state;
    struct iovec *part = malloc(sizeof(*part) * (size_t)(n_iov > 0 ? n_iov : 1));
    uint64_t done = 0;
    int ret = 0;

    if (s->is_differencing) {
        free(part);
        return vimg_error_set(err, ENOTSUP, "Could not write to '%s': differencing VHDX images "
                              "are read-only", node->filename);
    }
    if (!part)
        return vimg_error_set(err, ENOMEM, "Out of memory");
    while (done < bytes && ret == 0) {
        uint64_t pos = offset + done;
        uint64_t len = s->block_size - pos % s->block_size;

        if (len > bytes - done)
            len = bytes - done;
        ret = vhdx_write_piece(node, pos, len, part, vhdx_iov_slice(iov, n_iov, done, len, part),
                               err);
        done += len;
    }
    free(part);
    if (ret == 0 && (flags & VIMG_REQ_FUA))
        ret = vimg_node_flush(node, err);
    return ret;
}

/*
 * Without a parent every range is data, as the core says of drivers without
 * block status (qemu-img 7.2's vhdx has none). With one, what the parent
 * holds is not allocated in this layer.
 */
static int
vhdx_block_status(struct vimg_node *node, uint64_t offset, uint64_t bytes,
                  struct vimg_block_status *bs, struct vimg_error *err)
{
    struct vhdx_state *s = node->state;
    uint64_t run;
    bool in_file;
    int ret;

    bs->flags = VIMG_BS_DATA | VIMG_BS_ALLOCATED;
    bs->bytes = bytes;
    if (!s->is_differencing)
        return 0;
    if ((ret = vhdx_diff_run(node, offset, bytes, &in_file, &run, err)) < 0)
        return ret;
    if (!in_file)
        bs->flags = 0;
    bs->bytes = run;
    return 0;
}

static int
vhdx_flush(struct vimg_node *node, struct vimg_error *err)
{
    struct vhdx_state *s = node->state;
    int ret;

    if (!s->is_writable)
        return vimg_node_flush(node->file, err);
    pthread_mutex_lock(&s->lock);
    ret = vhdx_commit(node, err);
    pthread_mutex_unlock(&s->lock);
    return ret;
}

/* Creation */

static const struct vimg_opt_desc vhdx_create_opts[] = {
    { "size", VIMG_OPT_SIZE, "Virtual disk size; max of 64TB.", NULL },
    { "log_size", VIMG_OPT_SIZE, "Log size; min 1MB.", "1048576" },
    { "block_size", VIMG_OPT_SIZE, "Block Size; min 1MB, max 256MB. 0 means auto-calculate "
      "based on image size.", "0" },
    { "subformat", VIMG_OPT_STRING, "VHDX format type, can be either 'dynamic' or 'fixed'. "
      "Default is 'dynamic'.", NULL },
    { "block_state_zero", VIMG_OPT_BOOL, "Force use of payload blocks of type 'ZERO'. "
      "Non-standard, but default.  Do not set to 'off' when using 'qemu-img convert' with "
      "subformat=dynamic.", NULL },
    { NULL, 0, NULL, NULL },
};

struct vhdx_create_params {
    uint64_t size;
    uint64_t log_size;
    uint64_t block_size;
    bool is_fixed;
    bool use_zero_blocks;
    const char *subformat;              /* as given, or NULL */
    /* The layout */
    uint64_t bat_offset, bat_length, md_offset, data_offset, n_payload, n_bat, chunk_ratio;
};

static int
vhdx_parse_create(struct vimg_opts *opts, struct vhdx_create_params *p, struct vimg_error *err)
{
    int ret;

    memset(p, 0, sizeof(*p));
    if ((ret = vimg_opts_get_size(opts, "log_size", VHDX_MIB, &p->log_size, err)) < 0 ||
        (ret = vimg_opts_get_size(opts, "block_size", 0, &p->block_size, err)) < 0 ||
        (ret = vimg_opts_get_bool(opts, "block_state_zero", true, &p->use_zero_blocks,
                                  err)) < 0)
        return ret;
    p->subformat = vimg_opts_get(opts, "subformat");
    if (!vimg_opts_has(opts, "size"))
        return vimg_error_set(err, EINVAL, "Image creation needs a size parameter");
    return vimg_opts_get_size(opts, "size", 0, &p->size, err);
}

/* Sizes as qemu-img rounds them; the errors come once the file exists, as in qemu-img. */
static int
vhdx_plan(struct vhdx_create_params *p, struct vimg_error *err)
{
    if (p->size > VHDX_MAX_SIZE)
        return vimg_error_set(err, EINVAL, "Image size too large; max of 64TB");
    p->is_fixed = p->subformat && strcmp(p->subformat, "fixed") == 0;
    if (p->subformat && !p->is_fixed && strcmp(p->subformat, "dynamic") != 0)
        return vimg_error_set(err, EINVAL, "Parameter 'subformat' does not accept value '%s'",
                              p->subformat);
    p->size = vhdx_round_up(p->size, 512);
    p->log_size = p->log_size < VHDX_MIB ? VHDX_MIB : vhdx_round_up(p->log_size, VHDX_MIB);
    if (p->block_size == 0)
        p->block_size = p->size > (UINT64_C(32) << 40) ? 64 * VHDX_MIB :
                        p->size > (UINT64_C(100) << 30) ? 32 * VHDX_MIB :
                        p->size > (UINT64_C(1) << 30) ? 16 * VHDX_MIB : 8 * VHDX_MIB;
    p->block_size = vhdx_round_up(p->block_size, VHDX_MIB);
    if (p->block_size > 256 * VHDX_MIB)
        p->block_size = 256 * VHDX_MIB;
    if (p->block_size & (p->block_size - 1))
        return vimg_error_set(err, EINVAL, "Block size must be a power of two");
    p->chunk_ratio = (UINT64_C(1) << 23) * 512 / p->block_size;
    p->n_payload = (p->size + p->block_size - 1) / p->block_size;
    p->n_bat = p->n_payload ? p->n_payload + (p->n_payload - 1) / p->chunk_ratio : 0;
    p->bat_offset = VHDX_MIB + p->log_size;
    p->bat_length = vhdx_round_up(p->n_bat ? p->n_bat * 8 : 1, VHDX_MIB);
    p->md_offset = p->bat_offset + p->bat_length;
    /* qemu-img leaves 4 MiB after the 1 MiB metadata region before the first block. */
    p->data_offset = p->md_offset + 5 * VHDX_MIB;
    return 0;
}

/* File identifier, both headers and both region tables: the first 320 KiB. */
static void
vhdx_encode_front(const struct vhdx_create_params *p, const uint8_t guids[2][16], uint32_t seq,
                  uint8_t *buf)
{
    static const char creator[] = "vimg";
    uint8_t *rt = buf + VHDX_REGION1_OFFSET;

    memcpy(buf, VHDX_FILE_ID_MAGIC, 8);
    for (size_t i = 0; i < sizeof(creator) - 1; i++)
        buf[8 + 2 * i] = (uint8_t)creator[i];
    for (int i = 0; i < 2; i++) {
        uint8_t *h = buf + (i ? VHDX_HEADER2_OFFSET : VHDX_HEADER1_OFFSET);

        memcpy(h + VHDX_HDR_OFF_SIGNATURE, "head", 4);
        vhdx_put_le64(h + VHDX_HDR_OFF_SEQUENCE, (uint64_t)seq + (uint64_t)i);
        memcpy(h + VHDX_HDR_OFF_FILE_GUID, guids[0], 16);
        memcpy(h + VHDX_HDR_OFF_DATA_GUID, guids[1], 16);
        h[VHDX_HDR_OFF_VERSION] = 1;
        vhdx_put_le32(h + VHDX_HDR_OFF_LOG_LENGTH, (uint32_t)p->log_size);
        vhdx_put_le64(h + VHDX_HDR_OFF_LOG_OFFSET, VHDX_MIB);
        vhdx_put_le32(h + VHDX_HDR_OFF_CHECKSUM,
                      vhdx_checksum(h, VHDX_HEADER_SIZE, VHDX_HDR_OFF_CHECKSUM));
    }
    /* qemu-img leaves the "required" bits of both regions clear; so does vimg. */
    memcpy(rt + VHDX_RT_OFF_SIGNATURE, "regi", 4);
    vhdx_put_le32(rt + VHDX_RT_OFF_COUNT, 2);
    memcpy(rt + VHDX_RT_HEADER_SIZE + VHDX_RE_OFF_GUID, vhdx_guid_bat, 16);
    vhdx_put_le64(rt + VHDX_RT_HEADER_SIZE + VHDX_RE_OFF_FILE_OFFSET, p->bat_offset);
    vhdx_put_le32(rt + VHDX_RT_HEADER_SIZE + VHDX_RE_OFF_LENGTH, (uint32_t)p->bat_length);
    memcpy(rt + VHDX_RT_HEADER_SIZE + VHDX_RT_ENTRY_SIZE + VHDX_RE_OFF_GUID,
           vhdx_guid_metadata, 16);
    vhdx_put_le64(rt + VHDX_RT_HEADER_SIZE + VHDX_RT_ENTRY_SIZE + VHDX_RE_OFF_FILE_OFFSET,
                  p->md_offset);
    vhdx_put_le32(rt + VHDX_RT_HEADER_SIZE + VHDX_RT_ENTRY_SIZE + VHDX_RE_OFF_LENGTH,
                  (uint32_t)VHDX_MIB);
    vhdx_put_le32(rt + VHDX_RT_OFF_CHECKSUM,
                  vhdx_checksum(rt, VHDX_REGION_SIZE, VHDX_RT_OFF_CHECKSUM));
    memcpy(rt + VHDX_REGION_SIZE, rt, VHDX_REGION_SIZE);
}

/* The metadata table and its five items, in the order and flags qemu-img writes them. */
static void
vhdx_encode_metadata(const struct vhdx_create_params *p, const uint8_t *page83, uint8_t *md)
{
    static const struct {
        const uint8_t *guid;
        uint32_t length, flags;
    } items[] = {
        { vhdx_guid_file_params, 8, VHDX_ME_FLAG_REQUIRED },
        { vhdx_guid_disk_size, 8, VHDX_ME_FLAG_REQUIRED | 2 },
        { vhdx_guid_page83, 16, VHDX_ME_FLAG_REQUIRED | 2 },
        { vhdx_guid_logical_sector, 4, VHDX_ME_FLAG_REQUIRED | 2 },
        { vhdx_guid_physical_sector, 4, VHDX_ME_FLAG_REQUIRED | 2 },
    };
    uint32_t off = VHDX_MD_TABLE_SIZE;
    uint8_t *d = md + VHDX_MD_TABLE_SIZE;

    memcpy(md + VHDX_MD_OFF_SIGNATURE, "metadata", 8);
    vhdx_put_le32(md + VHDX_MD_OFF_COUNT, 5);
    for (size_t i = 0; i < 5; i++) {
        uint8_t *e = md + VHDX_MD_HEADER_SIZE + i * VHDX_MD_ENTRY_SIZE;

        memcpy(e + VHDX_ME_OFF_GUID, items[i].guid, 16);
        vhdx_put_le32(e + VHDX_ME_OFF_OFFSET, off);
        vhdx_put_le32(e + VHDX_ME_OFF_LENGTH, items[i].length);
        vhdx_put_le32(e + VHDX_ME_OFF_FLAGS, items[i].flags);
        off += items[i].length;
    }
    vhdx_put_le32(d, (uint32_t)p->block_size);
    vhdx_put_le32(d + 4, p->is_fixed ? 1 : 0);          /* LeaveBlocksAllocated */
    vhdx_put_le64(d + 8, p->size);
    memcpy(d + 16, page83, 16);
    vhdx_put_le32(d + 32, 512);
    vhdx_put_le32(d + 36, 512);
}

/* The BAT: ZERO or NOT_PRESENT blocks, or a fixed image's blocks in order. */
static void
vhdx_encode_new_bat(const struct vhdx_create_params *p, uint8_t *bat)
{
    for (uint64_t block = 0; block < p->n_payload; block++) {
        uint64_t index = block + block / p->chunk_ratio, e;

        if (p->use_zero_blocks)
            e = VHDX_PAYLOAD_ZERO;
        else if (p->is_fixed)
            e = (p->data_offset + block * p->block_size) | VHDX_PAYLOAD_FULLY_PRESENT;
        else
            e = VHDX_PAYLOAD_NOT_PRESENT;
        vhdx_put_le64(bat + 8 * index, e);
    }
}

static int
vhdx_write_new(struct vimg_node *file, const struct vhdx_create_params *p,
               struct vimg_error *err)
{
    uint64_t front_len = VHDX_REGION1_OFFSET + 2 * VHDX_REGION_SIZE;
    uint8_t guids[3][16], *front, *bat, *md;
    uint32_t seq;
    int ret;

    if (getrandom(guids, sizeof(guids), 0) != sizeof(guids) ||
        getrandom(&seq, sizeof(seq), 0) != sizeof(seq))
        return vimg_error_set_errno(err, errno, "Could not generate a GUID");
    front = calloc(1, front_len);
    bat = calloc(1, p->bat_length);
    md = calloc(1, VHDX_MD_TABLE_SIZE + 4096);
    if (!front || !bat || !md) {
        ret = vimg_error_set(err, ENOMEM, "Out of memory");
        goto out;
    }
    vhdx_encode_front(p, (const uint8_t (*)[16])guids, seq, front);
    vhdx_encode_metadata(p, guids[2], md);
    vhdx_encode_new_bat(p, bat);
    /*
     * Everything else first; the file identifier and headers make it a VHDX
     * last. Like qemu-img, only what holds data is written: the file stays
     * sparse.
     */
    if ((ret = vimg_node_pwrite(file, p->md_offset, md, VHDX_MD_TABLE_SIZE + 4096, 0,
                                err)) == 0 &&
        (!(p->use_zero_blocks || p->is_fixed) ||
         (ret = vimg_node_pwrite(file, p->bat_offset, bat, p->bat_length, 0, err)) == 0) &&
        (ret = vimg_node_pwrite(file, 0, front, 4096, 0, err)) == 0 &&
        (ret = vimg_node_pwrite(file, VHDX_HEADER1_OFFSET, front + VHDX_HEADER1_OFFSET,
                                VHDX_HEADER_SIZE, 0, err)) == 0 &&
        (ret = vimg_node_pwrite(file, VHDX_HEADER2_OFFSET, front + VHDX_HEADER2_OFFSET,
                                VHDX_HEADER_SIZE, 0, err)) == 0)
        ret = vimg_node_pwrite(file, VHDX_REGION1_OFFSET, front + VHDX_REGION1_OFFSET,
                               2 * VHDX_REGION_SIZE, 0, err);
out:
    free(front);
    free(bat);
    free(md);
    return ret;
}

static int
vhdx_create(const char *filename, struct vimg_opts *opts, struct vimg_error *err)
{
    struct vhdx_create_params p;
    struct vimg_node *file;
    int ret;

    if ((ret = vhdx_parse_create(opts, &p, err)) < 0 ||
        (ret = vimg_create_file_empty(filename, opts, err)) < 0 ||
        (ret = vhdx_plan(&p, err)) < 0)
        return ret;
    ret = vimg_open(&file, filename, NULL, NULL, VIMG_OPEN_RDWR | VIMG_OPEN_PROTOCOL, err);
    if (ret < 0)
        return ret;
    ret = vimg_node_truncate(file, p.data_offset + (p.is_fixed ? p.size : 0), false, NULL, err);
    if (ret == 0)
        ret = vhdx_write_new(file, &p, err);
    if (ret == 0)
        ret = vimg_node_flush(file, err);
    vimg_close(file);
    return ret;
}

/* Check */

/*
 * Counts the BAT entries of present blocks that lie past the end of the file
 * or over the log, BAT or metadata region, saying why on the way as
 * qemu-img does (it checks at every open and refuses the image then).
 */
static int
vhdx_check_bat(struct vimg_node *node, bool is_open, uint64_t *n_bad, struct vimg_error *err)
{
    struct vhdx_state *s = node->state;
    int64_t file_len = vimg_node_length(node->file, err);
    const uint64_t regions[3][2] = {
        { s->md_offset, s->md_length }, { s->bat_offset, s->bat_length },
        { s->log_offset, s->log_length },
    };

    if (file_len < 0)
        return (int)file_len;
    *n_bad = 0;
    for (uint64_t i = 0; i < s->n_stored; i++) {
        uint64_t off = s->bat[i] & VHDX_BAT_OFFSET_MASK, len = s->block_size;
        uint64_t left = s->size - i * s->block_size;
        bool is_bad = false;

        if ((s->bat[i] & VHDX_BAT_STATE_MASK) != VHDX_PAYLOAD_FULLY_PRESENT)
            continue;
        /* qemu-img lets the last block be partial, counting the index as a block number. */
        if (i * s->block_size < s->size && left < len)
            len = left;
        if (off >= (uint64_t)file_len) {
            vimg_warn("VHDX BAT entry %" PRIu64 " start offset %" PRIu64 " points after end "
                      "of file (%" PRId64 "). Image has probably been truncated.", i, off,
                      file_len);
            is_bad = true;
        } else if (off + len > (uint64_t)file_len) {
            vimg_warn("VHDX BAT entry %" PRIu64 " end offset %" PRIu64 " points after end "
                      "of file (%" PRId64 "). Image has probably been truncated.", i,
                      off + len - 1, file_len);
            is_bad = true;
        }
        for (int r = 0; r < 3; r++) {
            if (regions[r][1] && off < regions[r][0] + regions[r][1] &&
                off + s->block_size > regions[r][0]) {
                vimg_warn("VHDX region %" PRIu64 "-%" PRIu64 " overlaps with region %" PRIu64
                          "-%" PRIu64, off, off + s->block_size, regions[r][0],
                          regions[r][0] + regions[r][1]);
                is_bad = true;
                break;
            }
        }
        *n_bad += is_bad;
        if (is_bad && is_open)
            break;                          /* an open stops at the first */
    }
    return 0;
}

/* A log replayed at this open counts as one repaired corruption, as in qemu-img. */
static int
vhdx_check(struct vimg_node *node, int fix, struct vimg_check_result *result,
           struct vimg_error *err)
{
    struct vhdx_state *s = node->state;
    uint64_t n_bad;
    int ret;

    (void)fix;
    if (s->was_log_replayed)
        result->corruptions_fixed++;
    if ((ret = vhdx_check_bat(node, false, &n_bad, err)) < 0)
        return ret;
    result->corruptions += n_bad;
    return 0;
}

/* Open and close */

/* Commits the BAT, then clears the log GUID: a clean image has no log to replay. */
static void
vhdx_close(struct vimg_node *node)
{
    struct vhdx_state *s = node->state;
    static const uint8_t zero_guid[16];
    struct vimg_error err = { 0 };

    if (s->has_written && (vhdx_commit(node, &err) < 0 ||
                           vhdx_update_headers(node, zero_guid, false, &err) < 0))
        vimg_warn("%s: %s", node->filename, err.msg);
    if (s->is_writable)
        pthread_mutex_destroy(&s->lock);
    free(s->bat);
    free(s->dirty);
    s->bat = NULL;
    s->dirty = NULL;
    s->has_written = false;
    s->is_writable = false;
}

/* A writer needs the log region, the allocation point and the dirty set. */
static int
vhdx_prepare_writes(struct vimg_node *node, unsigned flags, struct vimg_error *err)
{
    struct vhdx_state *s = node->state;
    int64_t file_len = vimg_node_length(node->file, err);

    if (file_len < 0)
        return (int)file_len;
    s->log_offset = vhdx_le64(s->header + VHDX_HDR_OFF_LOG_OFFSET);
    s->log_length = vhdx_le32(s->header + VHDX_HDR_OFF_LOG_LENGTH);
    if (!(flags & VIMG_OPEN_RDWR))
        return 0;
    if (s->log_length < VHDX_MIB || s->log_length % VHDX_MIB || s->log_offset % VHDX_MIB ||
        s->log_offset > (uint64_t)file_len || s->log_length > (uint64_t)file_len - s->log_offset)
        return vimg_error_set(err, EINVAL, "VHDX log at 0x%" PRIx64 " (%" PRIu64 " bytes) is "
                              "outside the file (%" PRId64 " bytes)", s->log_offset,
                              s->log_length, file_len);
    s->file_end = (uint64_t)file_len;
    s->is_writable = true;
    pthread_mutex_init(&s->lock, NULL);
    return 0;
}

/* qemu-img refuses an image whose BAT points outside the file, except to check it. */
static int
vhdx_open_check_bat(struct vimg_node *node, unsigned flags, struct vimg_error *err)
{
    struct vhdx_state *s = node->state;
    uint64_t n_bad, n_sectors = (s->n_bat + VHDX_BAT_SECTOR_ENTRIES - 1) /
                                VHDX_BAT_SECTOR_ENTRIES;
    int ret;

    if (s->is_writable && !(s->dirty = calloc(n_sectors + 1, 1)))
        return vimg_error_set(err, ENOMEM, "Out of memory");
    if (flags & VIMG_OPEN_CHECK)
        return 0;
    if ((ret = vhdx_check_bat(node, true, &n_bad, err)) < 0)
        return ret;
    return n_bad ? vhdx_refuse(node, EINVAL, err) : 0;
}

static int
vhdx_open(struct vimg_node *node, struct vimg_opts *opts, unsigned flags,
          struct vimg_error *err)
{
    uint8_t magic[8];
    int ret;

    (void)opts;
    if ((ret = vimg_node_pread_padded(node->file, 0, magic, sizeof(magic), err)) < 0)
        return ret;
    if (memcmp(magic, VHDX_FILE_ID_MAGIC, 8) != 0)
        return vimg_error_set(err, EINVAL, "Not a VHDX image");
    if ((ret = vhdx_read_headers(node, err)) < 0 ||
        (ret = vhdx_open_log(node, flags, err)) < 0 ||
        (ret = vhdx_read_regions(node, err)) < 0 ||
        (ret = vhdx_read_metadata(node, err)) < 0 ||
        (ret = vhdx_prepare_writes(node, flags, err)) < 0 ||
        (ret = vhdx_load_bat(node, err)) < 0 ||
        (ret = vhdx_open_check_bat(node, flags, err)) < 0) {
        vhdx_close(node);
        return ret;
    }
    node->request_alignment = 1;
    node->cluster_size = ((struct vhdx_state *)node->state)->block_size;
    return 0;
}

const struct vimg_driver vimg_vhdx_driver = {
    .name = "vhdx",
    .kind = VIMG_DRIVER_FORMAT,
    .state_size = sizeof(struct vhdx_state),
    .has_zero_init = true,
    .supports_backing = true,       /* differencing images only */
    .probe = vhdx_probe,
    .open = vhdx_open,
    .close = vhdx_close,
    .create_opts = vhdx_create_opts,
    .create = vhdx_create,
    .preadv = vhdx_preadv,
    .pwritev = vhdx_pwritev,
    .flush = vhdx_flush,
    .length = vhdx_length,
    .block_status = vhdx_block_status,
    .check = vhdx_check,
};
