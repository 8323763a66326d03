/*
 * The vpc format: Virtual PC / Hyper-V VHD images, fixed and dynamic, as in
 * libyal/libvhdi "Virtual Hard Disk (VHD) image format" (SPECS.md, "VHD"):
 * the 512-byte footer (at the end of every image, with a copy at the start of
 * dynamic ones), the dynamic disk header, the block allocation table and the
 * per-block sector bitmaps.
 *
 * Behaviour follows qemu-img 7.2, observed: the virtual size comes from the
 * CHS geometry except for the creator apps Hyper-V and friends use (or with
 * force_size_calc=current_size); open-time checks and their messages are
 * qemu-img's. Sector bitmaps are written (all ones) when a block is
 * allocated but never consulted on read in fixed and dynamic disks, as
 * qemu-img does: a block is data once its BAT entry is set.
 *
 * Differencing disks (type 4) go beyond qemu-img 7.2, which opens them as
 * dynamic disks without a parent (its `info` shows no backing file; ours
 * shows the parent as "backing filename"): the parent locators of the
 * dynamic header name the parent, which the core opens as the backing node
 * (format vpc); in an allocated block a set bit of the sector bitmap means
 * the sector is in this file, a clear one that it comes from the parent, and
 * unallocated blocks come from the parent. They are read-only: writes are
 * refused.
 *
 * Left out: writing differencing disks, `check`, resize.
 */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include "core/driver.h"
#include "formats/vhd-parent.h"

#define VPC_SECTOR_SIZE             512
#define VPC_FOOTER_SIZE             512
#define VPC_DYN_HEADER_SIZE         1024

/* Footer field offsets (spec "File footer"), big-endian. */
#define VPC_FOOTER_OFF_COOKIE       0       /* "conectix" */
#define VPC_FOOTER_OFF_FEATURES     8       /* BE32 */
#define VPC_FOOTER_OFF_VERSION      12      /* BE32 */
#define VPC_FOOTER_OFF_DATA_OFFSET  16      /* BE64, the dynamic header */
#define VPC_FOOTER_OFF_TIMESTAMP    24      /* BE32, seconds since 2000-01-01 UTC */
#define VPC_FOOTER_OFF_CREATOR_APP  28      /* char[4] */
#define VPC_FOOTER_OFF_CREATOR_VER  32      /* BE32 */
#define VPC_FOOTER_OFF_CREATOR_OS   36      /* char[4] */
#define VPC_FOOTER_OFF_ORIG_SIZE    40      /* BE64 */
#define VPC_FOOTER_OFF_CUR_SIZE     48      /* BE64 */
#define VPC_FOOTER_OFF_CYLINDERS    56      /* BE16 */
#define VPC_FOOTER_OFF_HEADS        58      /* u8 */
#define VPC_FOOTER_OFF_SECTORS      59      /* u8, per track */
#define VPC_FOOTER_OFF_DISK_TYPE    60      /* BE32 */
#define VPC_FOOTER_OFF_CHECKSUM     64      /* BE32 */
#define VPC_FOOTER_OFF_UUID         68      /* 16 bytes */

/* Dynamic disk header field offsets (spec "Dynamic disk header"). */
#define VPC_DYN_OFF_COOKIE          0       /* "cxsparse" */
#define VPC_DYN_OFF_DATA_OFFSET     8       /* BE64, unused: all ones */
#define VPC_DYN_OFF_TABLE_OFFSET    16      /* BE64, the BAT */
#define VPC_DYN_OFF_VERSION         24      /* BE32 */
#define VPC_DYN_OFF_MAX_ENTRIES     28      /* BE32 */
#define VPC_DYN_OFF_BLOCK_SIZE      32      /* BE32 */
#define VPC_DYN_OFF_CHECKSUM        36      /* BE32 */
#define VPC_DYN_OFF_PARENT_NAME     64      /* 512 bytes, UTF-16BE */
#define VPC_DYN_PARENT_NAME_SIZE    512
#define VPC_DYN_OFF_LOCATORS        576     /* 8 entries of 24 bytes */
#define VPC_N_LOCATORS              8
#define VPC_LOCATOR_SIZE            24
#define VPC_LOC_OFF_CODE            0       /* char[4], the platform code */
#define VPC_LOC_OFF_DATA_LENGTH     8       /* BE32, bytes */
#define VPC_LOC_OFF_DATA_OFFSET     16      /* BE64, in the file */
#define VPC_MAX_LOCATOR_LENGTH      65536   /* a path; anything longer is refused */

#define VPC_DISK_FIXED              2
#define VPC_DISK_DIFFERENCING       4
#define VPC_VERSION                 UINT32_C(0x00010000)
#define VPC_FEATURES_RESERVED       2
#define VPC_BAT_UNUSED              UINT32_C(0xffffffff)
#define VPC_TIME_EPOCH              INT64_C(946684800)  /* 2000-01-01 in Unix time */

/* What qemu-img 7.2 writes and accepts. */
#define VPC_CREATE_BLOCK_SIZE       UINT32_C(0x200000)
#define VPC_CREATOR_VERSION         UINT32_C(0x00050003)
#define VPC_MAX_CHS_SECTORS         (UINT64_C(65535) * 16 * 255)
#define VPC_MAX_SECTORS             UINT64_C(0xff000000)    /* 2040 GiB */
#define VPC_MAX_READ                UINT64_C(0x7ffffe00)    /* one request */
#define VPC_MAX_FILE_OFFSET         UINT64_C(0x7fffffffc0000000)

enum vpc_size_calc { VPC_SIZE_AUTO, VPC_SIZE_CHS, VPC_SIZE_CURRENT };

struct vpc_footer {
    uint64_t data_offset;
    char creator_app[4];
    uint64_t current_size;
    uint16_t cylinders;
    uint8_t heads;
    uint8_t sectors;
    uint32_t disk_type;
    uint32_t checksum;
};

struct vpc_state {
    bool is_dynamic;
    bool is_differencing;       /* sector bitmaps say which sectors the parent holds */
    uint64_t size;              /* guest-visible bytes */
    uint8_t footer[VPC_FOOTER_SIZE];    /* as on disk, written after each new block */
    uint32_t block_size;
    uint32_t bitmap_size;       /* bytes before each block's data */
    uint32_t n_bat;             /* max_table_entries */
    uint64_t bat_offset;
    pthread_mutex_t lock;       /* protects bat and free_offset */
    uint32_t *bat;              /* in sectors; VPC_BAT_UNUSED = not allocated */
    uint64_t free_offset;       /* where the next block goes; the footer sits there */
};

static uint16_t
vpc_be16(const uint8_t *p)
{
    return (uint16_t)(p[0] << 8 | p[1]);
}

static uint32_t
vpc_be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static uint64_t
vpc_be64(const uint8_t *p)
{
    return (uint64_t)vpc_be32(p) << 32 | vpc_be32(p + 4);
}

static void
vpc_put_be16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)(v >> 8);
    p[1] = (uint8_t)v;
}

static void
vpc_put_be32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

static void
vpc_put_be64(uint8_t *p, uint64_t v)
{
    vpc_put_be32(p, (uint32_t)(v >> 32));
    vpc_put_be32(p + 4, (uint32_t)v);
}

/* One's complement of the byte sum, with the checksum field counted as zero. */
static uint32_t
vpc_checksum(const uint8_t *buf, size_t len, size_t checksum_off)
{
    uint32_t sum = 0;

    for (size_t i = 0; i < len; i++)
        if (i < checksum_off || i >= checksum_off + 4)
            sum += buf[i];
    return ~sum;
}

static void
vpc_decode_footer(const uint8_t *buf, struct vpc_footer *f)
{
    f->data_offset = vpc_be64(buf + VPC_FOOTER_OFF_DATA_OFFSET);
    memcpy(f->creator_app, buf + VPC_FOOTER_OFF_CREATOR_APP, 4);
    f->current_size = vpc_be64(buf + VPC_FOOTER_OFF_CUR_SIZE);
    f->cylinders = vpc_be16(buf + VPC_FOOTER_OFF_CYLINDERS);
    f->heads = buf[VPC_FOOTER_OFF_HEADS];
    f->sectors = buf[VPC_FOOTER_OFF_SECTORS];
    f->disk_type = vpc_be32(buf + VPC_FOOTER_OFF_DISK_TYPE);
    f->checksum = vpc_be32(buf + VPC_FOOTER_OFF_CHECKSUM);
}

static int
vpc_probe(const uint8_t *buf, size_t len, const char *filename)
{
    (void)filename;
    /* Like qemu-img: only a footer copy at the start names the format; fixed disks probe raw. */
    return len >= 8 && memcmp(buf, "conectix", 8) == 0 ? 100 : 0;
}

static int64_t
vpc_file_length(struct vimg_node *node, struct vimg_error *err)
{
    return vimg_node_length(node->file, err);
}

/* The footer copy at the start, else the footer at the end (fixed disks only). */
static int
vpc_read_footer(struct vimg_node *node, uint8_t *buf, struct vimg_error *err)
{
    int64_t file_len;
    int ret;

    if ((ret = vimg_node_pread_padded(node->file, 0, buf, VPC_FOOTER_SIZE, err)) < 0)
        return ret;
    if (memcmp(buf + VPC_FOOTER_OFF_COOKIE, "conectix", 8) == 0)
        return 0;
    if ((file_len = vpc_file_length(node, err)) < 0)
        return (int)file_len;
    if (file_len < VPC_FOOTER_SIZE)
        return vimg_error_set(err, EINVAL, "File too small for a VHD header");
    if ((ret = vimg_node_pread_padded(node->file, (uint64_t)file_len - VPC_FOOTER_SIZE, buf,
                                      VPC_FOOTER_SIZE, err)) < 0)
        return ret;
    if (memcmp(buf + VPC_FOOTER_OFF_COOKIE, "conectix", 8) != 0 ||
        vpc_be32(buf + VPC_FOOTER_OFF_DISK_TYPE) != VPC_DISK_FIXED)
        return vimg_error_set(err, EINVAL, "invalid VPC image");
    return 0;
}

/*
 * Hyper-V and the tools that follow it store the exact size in current_size;
 * Virtual PC (and qemu's own "qemu" images) mean the CHS geometry.
 */
static bool
vpc_creator_uses_current_size(const char app[4])
{
    static const char *const apps[] = { "win ", "qem2", "d2v ", "CTXS", "tap" };

    for (size_t i = 0; i < sizeof(apps) / sizeof(apps[0]); i++)
        if (memcmp(app, apps[i], 4) == 0)   /* "tap" compares its NUL too */
            return true;
    return false;
}

static int
vpc_parse_size_calc(struct vimg_opts *opts, enum vpc_size_calc *out, struct vimg_error *err)
{
    const char *v = vimg_opts_get(opts, "force_size_calc");

    *out = VPC_SIZE_AUTO;
    if (!v)
        return 0;
    if (strcmp(v, "chs") == 0)
        *out = VPC_SIZE_CHS;
    else if (strcmp(v, "current_size") == 0)
        *out = VPC_SIZE_CURRENT;
    else
        return vimg_error_set(err, EINVAL, "Invalid size calculation mode: '%s'", v);
    return 0;
}

static int
vpc_apply_footer(struct vimg_node *node, const struct vpc_footer *f, enum vpc_size_calc calc,
                 struct vimg_error *err)
{
    struct vpc_state *s = node->state;
    uint64_t n_sectors = (uint64_t)f->cylinders * f->heads * f->sectors;
    bool use_current = calc == VPC_SIZE_CURRENT ||
        (calc == VPC_SIZE_AUTO && vpc_creator_uses_current_size(f->creator_app));

    if (use_current || n_sectors == VPC_MAX_CHS_SECTORS)
        n_sectors = f->current_size / VPC_SECTOR_SIZE;
    if (n_sectors > VPC_MAX_SECTORS)
        return vimg_error_set(err, EFBIG, "Could not open '%s': File too large",
                              node->filename);
    s->size = n_sectors * VPC_SECTOR_SIZE;
    s->is_dynamic = f->disk_type != VPC_DISK_FIXED;
    return 0;
}

static int
vpc_check_dyn_header(struct vimg_node *node, const uint8_t *h, struct vimg_error *err)
{
    struct vpc_state *s = node->state;
    uint32_t entries = vpc_be32(h + VPC_DYN_OFF_MAX_ENTRIES);

    if (memcmp(h + VPC_DYN_OFF_COOKIE, "cxsparse", 8) != 0)
        return vimg_error_set(err, EINVAL, "Invalid header magic");
    s->block_size = vpc_be32(h + VPC_DYN_OFF_BLOCK_SIZE);
    if (s->block_size < VPC_SECTOR_SIZE || (s->block_size & (s->block_size - 1)))
        return vimg_error_set(err, EINVAL, "Invalid block size %" PRIu32, s->block_size);
    /* One bit per sector, padded to whole sectors. */
    s->bitmap_size = (s->block_size / (8 * VPC_SECTOR_SIZE) + VPC_SECTOR_SIZE - 1) &
                     ~(uint32_t)(VPC_SECTOR_SIZE - 1);
    if ((uint64_t)entries * s->block_size < s->size)
        return vimg_error_set(err, EINVAL, "Page table too small");
    /* qemu-img prints the count as a signed 32-bit number. */
    if (entries > INT32_MAX / 4)
        return vimg_error_set(err, EINVAL, "Max Table Entries too large (%" PRId32 ")",
                              (int32_t)entries);
    s->n_bat = entries;
    s->bat_offset = vpc_be64(h + VPC_DYN_OFF_TABLE_OFFSET);
    return 0;
}

static int
vpc_truncated(struct vimg_error *err)
{
    return vimg_error_set(err, EINVAL, "block-vpc: free_data_block_offset points after the "
                          "end of file. The image has been truncated.");
}

/*
 * Loads the BAT and finds the end of the last block. A BAT or block past the
 * end of the file is refused before anything is allocated for it.
 */
static int
vpc_load_bat(struct vimg_node *node, struct vimg_error *err)
{
    struct vpc_state *s = node->state;
    uint64_t bytes = (uint64_t)s->n_bat * 4, end;
    int64_t file_len = vpc_file_length(node, err);
    uint8_t *raw;
    int ret;

    if (file_len < 0)
        return (int)file_len;
    if (bytes > VPC_MAX_READ || s->bat_offset > VPC_MAX_FILE_OFFSET - bytes)
        return vimg_error_set(err, EINVAL, "Error reading pagetable");
    end = (s->bat_offset + bytes + VPC_SECTOR_SIZE - 1) & ~(uint64_t)(VPC_SECTOR_SIZE - 1);
    if (end > (uint64_t)file_len)
        return vpc_truncated(err);
    raw = malloc(bytes + 1);
    s->bat = malloc(bytes + 1);
    if (!raw || !s->bat) {
        free(raw);
        return vimg_error_set(err, ENOMEM, "Out of memory");
    }
    ret = vimg_node_pread(node->file, s->bat_offset, raw, bytes, 0, err);
    for (uint32_t i = 0; ret == 0 && i < s->n_bat; i++) {
        s->bat[i] = vpc_be32(raw + 4 * (uint64_t)i);
        if (s->bat[i] != VPC_BAT_UNUSED) {
            uint64_t next = (uint64_t)s->bat[i] * VPC_SECTOR_SIZE + s->bitmap_size +
                            s->block_size;
            if (next > end)
                end = next;
        }
    }
    free(raw);
    if (ret == 0 && end > (uint64_t)file_len)
        ret = vpc_truncated(err);
    s->free_offset = end;
    return ret;
}

/* Parent locators (spec "Dynamic disk header"): relative ones are tried first. */
static const struct {
    char code[5];
    bool is_utf16;          /* UTF-16LE; else bytes (ASCII, or a UTF-8 file URL) */
    bool is_relative;
} vpc_locator_kinds[] = {
    { "W2ru", true, true },
    { "Wi2r", false, true },        /* deprecated */
    { "W2ku", true, false },
    { "Wi2k", false, false },       /* deprecated */
    { "MacX", false, false },       /* file:// URL */
};

/* The path locator entry e names, as this host spells it; *out is NULL for other kinds. */
static int
vpc_read_locator(struct vimg_node *node, const uint8_t *e, size_t kind, char **out,
                 struct vimg_error *err)
{
    uint32_t len = vpc_be32(e + VPC_LOC_OFF_DATA_LENGTH);
    uint64_t off = vpc_be64(e + VPC_LOC_OFF_DATA_OFFSET);
    int64_t file_len = vpc_file_length(node, err);
    uint8_t *raw;
    char *path;
    int ret;

    *out = NULL;
    if (file_len < 0)
        return (int)file_len;
    if (len == 0 || len > VPC_MAX_LOCATOR_LENGTH || off > (uint64_t)file_len ||
        len > (uint64_t)file_len - off)
        return vimg_error_set(err, EINVAL, "Could not open '%s': parent locator %s is invalid "
                              "(%" PRIu32 " bytes at 0x%" PRIx64 ", file size %" PRId64 ")",
                              node->filename, vpc_locator_kinds[kind].code, len, off, file_len);
    if (!(raw = calloc(1, (size_t)len + 2)))
        return vimg_error_set(err, ENOMEM, "Out of memory");
    if ((ret = vimg_node_pread(node->file, off, raw, len, 0, err)) < 0) {
        free(raw);
        return ret;
    }
    path = vpc_locator_kinds[kind].is_utf16 ? vhd_parent_utf16_to_utf8(raw, len, false)
                                            : strdup((char *)raw);
    free(raw);
    if (!path)
        return vimg_error_set(err, EINVAL, "Could not open '%s': parent locator %s is not "
                              "valid UTF-16", node->filename, vpc_locator_kinds[kind].code);
    vhd_parent_path_to_host(path);
    *out = path;
    return 0;
}

/*
 * Picks the parent: the first locator (relative ones first) whose file
 * exists, else the first one given, else the parent name of the header
 * (next to the image). The core opens it and names it when it is missing.
 * With none of them, the disk reads as a dynamic one, as in qemu-img.
 */
static int
vpc_find_parent(struct vimg_node *node, const uint8_t *h, struct vimg_error *err)
{
    struct vpc_state *s = node->state;
    char *chosen = NULL, *fallback = NULL;
    int ret = 0;

    for (size_t kind = 0; kind < sizeof(vpc_locator_kinds) / sizeof(vpc_locator_kinds[0]) &&
                          !chosen && ret == 0; kind++) {
        for (int i = 0; i < VPC_N_LOCATORS && !chosen && ret == 0; i++) {
            const uint8_t *e = h + VPC_DYN_OFF_LOCATORS + i * VPC_LOCATOR_SIZE;
            char *path;
            if (memcmp(e + VPC_LOC_OFF_CODE, vpc_locator_kinds[kind].code, 4) != 0)
                continue;
            if ((ret = vpc_read_locator(node, e, kind, &path, err)) < 0 || !*path) {
                free(path);
                continue;
            }
            if (vhd_parent_exists(node->filename, path))
                chosen = path;
            else if (!fallback)
                fallback = path;
            else
                free(path);
        }
    }
    if (ret < 0) {
        free(fallback);
        return ret;
    }
    if (!chosen && fallback) {
        chosen = fallback;
        fallback = NULL;
    }
    free(fallback);
    if (!chosen) {
        chosen = vhd_parent_utf16_to_utf8(h + VPC_DYN_OFF_PARENT_NAME,
                                          VPC_DYN_PARENT_NAME_SIZE, true);
        if (chosen)
            vhd_parent_path_to_host(chosen);
        if (!chosen || !*chosen) {
            /* Nothing names a parent: a dynamic disk without one, as qemu-img reads it. */
            free(chosen);
            s->is_differencing = false;
            return 0;
        }
    }
    if (vhd_parent_is_self(node->filename, chosen)) {
        ret = vimg_error_set(err, ELOOP, "Could not open '%s': the differencing VHD names "
                             "itself as its parent ('%s')", node->filename, chosen);
        free(chosen);
        return ret;
    }
    node->backing_filename = chosen;
    /* A fixed parent probes as raw: the parent of a VHD is a VHD. */
    if (!(node->backing_format = strdup("vpc")))
        return vimg_error_set(err, ENOMEM, "Out of memory");
    return 0;
}

static int
vpc_open_dynamic(struct vimg_node *node, const struct vpc_footer *f, struct vimg_error *err)
{
    struct vpc_state *s = node->state;
    uint8_t h[VPC_DYN_HEADER_SIZE];
    int ret;

    if (f->data_offset > VPC_MAX_FILE_OFFSET - VPC_DYN_HEADER_SIZE)
        return vimg_error_set(err, EINVAL, "Error reading dynamic VHD header");
    if ((ret = vimg_node_pread_padded(node->file, f->data_offset, h, sizeof(h), err)) < 0)
        return ret;
    if ((ret = vpc_check_dyn_header(node, h, err)) < 0 ||
        (ret = vpc_load_bat(node, err)) < 0)
        return ret;
    s->is_differencing = f->disk_type == VPC_DISK_DIFFERENCING;
    return s->is_differencing ? vpc_find_parent(node, h, err) : 0;
}

static void
vpc_close(struct vimg_node *node)
{
    struct vpc_state *s = node->state;

    free(s->bat);
    s->bat = NULL;
    pthread_mutex_destroy(&s->lock);
}

/* The checks and their order are qemu-img's, so that the messages match. */
static int
vpc_open(struct vimg_node *node, struct vimg_opts *opts, unsigned flags,
         struct vimg_error *err)
{
    struct vpc_state *s = node->state;
    enum vpc_size_calc calc;
    struct vpc_footer f;
    int ret;

    (void)flags;
    if ((ret = vpc_parse_size_calc(opts, &calc, err)) < 0 ||
        (ret = vpc_read_footer(node, s->footer, err)) < 0)
        return ret;
    vpc_decode_footer(s->footer, &f);
    if (vpc_checksum(s->footer, VPC_FOOTER_SIZE, VPC_FOOTER_OFF_CHECKSUM) != f.checksum)
        return vimg_error_set(err, EINVAL, "Incorrect header checksum");
    if ((ret = vpc_apply_footer(node, &f, calc, err)) < 0)
        return ret;
    pthread_mutex_init(&s->lock, NULL);
    if (s->is_dynamic && (ret = vpc_open_dynamic(node, &f, err)) < 0) {
        vpc_close(node);
        return ret;
    }
    node->request_alignment = VPC_SECTOR_SIZE;
    node->cluster_size = s->is_dynamic ? s->block_size : 0;
    return 0;
}

static int64_t
vpc_length(struct vimg_node *node, struct vimg_error *err)
{
    struct vpc_state *s = node->state;

    (void)err;
    return (int64_t)s->size;
}

/* The file offset of the data at guest offset, or 0 when its block is not allocated. */
static uint64_t
vpc_host_offset(struct vpc_state *s, uint64_t offset)
{
    uint64_t index = offset / s->block_size;
    uint32_t entry;

    pthread_mutex_lock(&s->lock);
    entry = index < s->n_bat ? s->bat[index] : VPC_BAT_UNUSED;
    pthread_mutex_unlock(&s->lock);
    if (entry == VPC_BAT_UNUSED)
        return 0;
    return (uint64_t)entry * VPC_SECTOR_SIZE + s->bitmap_size + offset % s->block_size;
}

/* Points out[] at bytes [skip, skip + len) of iov; returns the count used. */
static int
vpc_iov_slice(const struct iovec *iov, int n_iov, uint64_t skip, uint64_t len,
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

static void
vpc_iov_zero(const struct iovec *iov, int n_iov)
{
    for (int i = 0; i < n_iov; i++)
        memset(iov[i].iov_base, 0, iov[i].iov_len);
}

/* Fixed disks: the guest sees the file from offset 0; past its end reads zeros. */
static int
vpc_read_fixed(struct vimg_node *node, uint64_t offset, uint64_t bytes,
               const struct iovec *iov, int n_iov, struct iovec *part, struct vimg_error *err)
{
    int64_t file_len = vpc_file_length(node, err);
    uint64_t avail;
    int n;

    if (file_len < 0)
        return (int)file_len;
    avail = offset >= (uint64_t)file_len ? 0 : (uint64_t)file_len - offset;
    if (avail > bytes)
        avail = bytes;
    n = vpc_iov_slice(iov, n_iov, avail, bytes - avail, part);
    vpc_iov_zero(part, n);
    if (!avail)
        return 0;
    n = vpc_iov_slice(iov, n_iov, 0, avail, part);
    return vimg_node_preadv(node->file, offset, avail, part, n, 0, err);
}

/*
 * Differencing disks: whether the sector at offset is in this file (else in
 * the parent), where, and for how many bytes (at most max, inside one block)
 * that holds. Sector bitmaps are MSB first: bit 7 of byte 0 is sector 0.
 */
static int
vpc_diff_run(struct vimg_node *node, uint64_t offset, uint64_t max, bool *in_file,
             uint64_t *host, uint64_t *run, struct vimg_error *err)
{
    struct vpc_state *s = node->state;
    uint64_t index = offset / s->block_size, in_block = offset % s->block_size;
    uint64_t limit = s->block_size - in_block, first, last, sec;
    uint8_t bits[4096];
    uint32_t entry;
    int ret, value;

    if (limit > max)
        limit = max;
    pthread_mutex_lock(&s->lock);
    entry = index < s->n_bat ? s->bat[index] : VPC_BAT_UNUSED;
    pthread_mutex_unlock(&s->lock);
    *run = limit;
    *in_file = false;
    if (entry == VPC_BAT_UNUSED)
        return 0;
    /* The bitmap bytes for the sectors of [in_block, +limit), at most a buffer's worth. */
    first = in_block / VPC_SECTOR_SIZE;
    last = (in_block + limit - 1) / VPC_SECTOR_SIZE;
    if (last / 8 - first / 8 >= sizeof(bits))
        last = (first / 8 + sizeof(bits)) * 8 - 1;
    ret = vimg_node_pread_padded(node->file, (uint64_t)entry * VPC_SECTOR_SIZE + first / 8,
                                 bits, last / 8 - first / 8 + 1, err);
    if (ret < 0)
        return ret;
#define VPC_BIT(n) ((bits[(n) / 8 - first / 8] >> (7 - (n) % 8)) & 1)
    value = VPC_BIT(first);
    for (sec = first + 1; sec <= last && VPC_BIT(sec) == value; sec++)
        ;
#undef VPC_BIT
    if (sec * VPC_SECTOR_SIZE - in_block < *run)
        *run = sec * VPC_SECTOR_SIZE - in_block;
    *in_file = value;
    *host = (uint64_t)entry * VPC_SECTOR_SIZE + s->bitmap_size + in_block;
    return 0;
}

/* Reads what this file holds; sectors that come from the parent read as zeros here. */
static int
vpc_read_differencing(struct vimg_node *node, uint64_t offset, uint64_t bytes,
                      const struct iovec *iov, int n_iov, struct iovec *part,
                      struct vimg_error *err)
{
    uint64_t done = 0;
    int ret = 0;

    while (done < bytes && ret == 0) {
        uint64_t host = 0, len;
        bool in_file;
        int n;

        if ((ret = vpc_diff_run(node, offset + done, bytes - done, &in_file, &host, &len,
                                err)) < 0)
            break;
        n = vpc_iov_slice(iov, n_iov, done, len, part);
        if (in_file)
            ret = vimg_node_preadv(node->file, host, len, part, n, 0, err);
        else
            vpc_iov_zero(part, n);
        done += len;
    }
    return ret;
}

static int
vpc_preadv(struct vimg_node *node, uint64_t offset, uint64_t bytes, const struct iovec *iov,
           int n_iov, unsigned flags, struct vimg_error *err)
{
    struct vpc_state *s = node->state;
    struct iovec *part = malloc(sizeof(*part) * (size_t)(n_iov > 0 ? n_iov : 1));
    uint64_t done = 0;
    int ret = 0;

    (void)flags;
    if (!part)
        return vimg_error_set(err, ENOMEM, "Out of memory");
    if (!s->is_dynamic || s->is_differencing) {
        ret = s->is_dynamic ? vpc_read_differencing(node, offset, bytes, iov, n_iov, part, err)
                            : vpc_read_fixed(node, offset, bytes, iov, n_iov, part, err);
        free(part);
        return ret;
    }
    while (done < bytes && ret == 0) {
        uint64_t pos = offset + done;
        uint64_t len = s->block_size - pos % s->block_size;
        uint64_t host = vpc_host_offset(s, pos);
        int n;

        if (len > bytes - done)
            len = bytes - done;
        n = vpc_iov_slice(iov, n_iov, done, len, part);
        if (host == 0)
            vpc_iov_zero(part, n);
        else
            ret = vimg_node_preadv(node->file, host, len, part, n, 0, err);
        done += len;
    }
    free(part);
    return ret;
}

/*
 * Allocates the block at index at the end of the file. The sector bitmap and
 * the footer after the block reach the disk before the BAT entry: a crash in
 * between leaks the space instead of pointing the BAT past the end of the file.
 */
static int
vpc_alloc_block(struct vimg_node *node, uint64_t index, struct vimg_error *err)
{
    struct vpc_state *s = node->state;
    uint64_t block = s->free_offset, end;
    uint8_t *bitmap, entry[4];
    int ret;

    if (block / VPC_SECTOR_SIZE >= VPC_BAT_UNUSED ||
        __builtin_add_overflow(block, (uint64_t)s->bitmap_size + s->block_size, &end))
        return vimg_error_set(err, EFBIG, "Block offset 0x%" PRIx64 " does not fit in the BAT",
                              block);
    if (!(bitmap = malloc(s->bitmap_size)))
        return vimg_error_set(err, ENOMEM, "Out of memory");
    memset(bitmap, 0xff, s->bitmap_size);
    ret = vimg_node_pwrite(node->file, block, bitmap, s->bitmap_size, 0, err);
    free(bitmap);
    if (ret == 0)
        ret = vimg_node_pwrite(node->file, end, s->footer, VPC_FOOTER_SIZE, 0, err);
    if (ret == 0)
        ret = vimg_node_flush(node->file, err);
    if (ret < 0)
        return ret;
    s->free_offset = end;
    vpc_put_be32(entry, (uint32_t)(block / VPC_SECTOR_SIZE));
    if ((ret = vimg_node_pwrite(node->file, s->bat_offset + 4 * index, entry, 4, 0, err)) < 0)
        return ret;
    if ((ret = vimg_node_flush(node->file, err)) < 0)
        return ret;
    s->bat[index] = (uint32_t)(block / VPC_SECTOR_SIZE);
    return 0;
}

/* The file offset for a write at offset, allocating its block when needed. */
static int
vpc_write_target(struct vimg_node *node, uint64_t offset, uint64_t *host,
                 struct vimg_error *err)
{
    struct vpc_state *s = node->state;
    uint64_t index = offset / s->block_size;
    int ret = 0;

    if (index >= s->n_bat)
        return vimg_error_set(err, EIO, "Offset 0x%" PRIx64 " is past the BAT (%" PRIu32
                              " entries)", offset, s->n_bat);
    pthread_mutex_lock(&s->lock);
    if (s->bat[index] == VPC_BAT_UNUSED)
        ret = vpc_alloc_block(node, index, err);
    if (ret == 0)
        *host = (uint64_t)s->bat[index] * VPC_SECTOR_SIZE + s->bitmap_size +
                offset % s->block_size;
    pthread_mutex_unlock(&s->lock);
    return ret;
}

static int
vpc_pwritev(struct vimg_node *node, uint64_t offset, uint64_t bytes, const struct iovec *iov,
            int n_iov, unsigned flags, struct vimg_error *err)
{
    struct vpc_state *s = node->state;
    struct iovec *part;
    uint64_t done = 0;
    int ret = 0;

    if (s->is_differencing)
        return vimg_error_set(err, ENOTSUP, "Could not write to '%s': differencing VHD images "
                              "are read-only", node->filename);
    if (!s->is_dynamic)
        return vimg_node_pwritev(node->file, offset, bytes, iov, n_iov, flags, err);
    if (!(part = malloc(sizeof(*part) * (size_t)(n_iov > 0 ? n_iov : 1))))
        return vimg_error_set(err, ENOMEM, "Out of memory");
    while (done < bytes && ret == 0) {
        uint64_t pos = offset + done;
        uint64_t len = s->block_size - pos % s->block_size, host = 0;
        int n;

        if (len > bytes - done)
            len = bytes - done;
        n = vpc_iov_slice(iov, n_iov, done, len, part);
        if ((ret = vpc_write_target(node, pos, &host, err)) == 0)
            ret = vimg_node_pwritev(node->file, host, len, part, n, flags, err);
        done += len;
    }
    free(part);
    return ret;
}

static int
vpc_flush(struct vimg_node *node, struct vimg_error *err)
{
    return vimg_node_flush(node->file, err);
}

/*
 * Fixed disks are all data, as in qemu-img; holes in the file (and the part
 * past its end) read as zeros.
 */
static int
vpc_block_status_fixed(struct vimg_node *node, uint64_t offset, uint64_t bytes,
                       struct vimg_block_status *bs, struct vimg_error *err)
{
    struct vimg_block_status below;
    int64_t file_len = vpc_file_length(node, err);
    int ret;

    if (file_len < 0)
        return (int)file_len;
    bs->flags = VIMG_BS_DATA | VIMG_BS_ALLOCATED | VIMG_BS_OFFSET_VALID;
    bs->offset = offset;
    bs->file = node->file;
    bs->bytes = bytes;
    if (offset >= (uint64_t)file_len) {
        bs->flags |= VIMG_BS_ZERO;
        return 0;
    }
    if ((ret = vimg_node_block_status(node->file, offset, bytes, &below, err)) < 0)
        return ret;
    bs->bytes = below.bytes;
    if ((below.flags & VIMG_BS_ZERO) && !(below.flags & VIMG_BS_DATA))
        bs->flags |= VIMG_BS_ZERO;
    return 0;
}

/*
 * Differencing disks: sectors of this file are data; the others, and runs of
 * unallocated blocks, are not allocated in this layer (the parent decides).
 */
static int
vpc_block_status_differencing(struct vimg_node *node, uint64_t offset, uint64_t bytes,
                              struct vimg_block_status *bs, struct vimg_error *err)
{
    struct vpc_state *s = node->state;
    uint64_t host = 0, run;
    bool in_file;
    int ret;

    if ((ret = vpc_diff_run(node, offset, bytes, &in_file, &host, &run, err)) < 0)
        return ret;
    if (in_file) {
        bs->flags = VIMG_BS_DATA | VIMG_BS_ALLOCATED | VIMG_BS_OFFSET_VALID;
        bs->offset = host;
        bs->file = node->file;
    } else {
        if (vpc_host_offset(s, offset) == 0)
            while (run < bytes && vpc_host_offset(s, offset + run) == 0)
                run += s->block_size;
        bs->flags = 0;
    }
    bs->bytes = run < bytes ? run : bytes;
    return 0;
}

/*
 * Dynamic disks: an allocated block alone (its bitmap separates it from the
 * next), or a run of unallocated blocks, which read as zeros.
 */
static int
vpc_block_status(struct vimg_node *node, uint64_t offset, uint64_t bytes,
                 struct vimg_block_status *bs, struct vimg_error *err)
{
    struct vpc_state *s = node->state;
    uint64_t host, run;

    if (!s->is_dynamic)
        return vpc_block_status_fixed(node, offset, bytes, bs, err);
    if (s->is_differencing)
        return vpc_block_status_differencing(node, offset, bytes, bs, err);
    host = vpc_host_offset(s, offset);
    run = s->block_size - offset % s->block_size;
    if (host) {
        bs->flags = VIMG_BS_DATA | VIMG_BS_ALLOCATED | VIMG_BS_OFFSET_VALID;
        bs->offset = host;
        bs->file = node->file;
    } else {
        while (run < bytes && vpc_host_offset(s, offset + run) == 0)
            run += s->block_size;
        bs->flags = VIMG_BS_ZERO | VIMG_BS_ALLOCATED;
    }
    bs->bytes = run < bytes ? run : bytes;
    return 0;
}

/* Creation */

static const struct vimg_opt_desc vpc_create_opts[] = {
    { "size", VIMG_OPT_SIZE, "Virtual disk size", NULL },
    { "subformat", VIMG_OPT_STRING,
      "Type of virtual hard disk format. Supported formats are {dynamic (default) | fixed} ",
      NULL },
    { "force_size", VIMG_OPT_BOOL, "Force disk size calculation to use the actual size "
      "specified, rather than using the nearest CHS-based calculation", NULL },
    { NULL, 0, NULL, NULL },
};

struct vpc_geometry {
    uint16_t cylinders;
    uint8_t heads;
    uint8_t sectors;
};

/* The CHS geometry for n_sectors, as the VHD specification's appendix computes it. */
static void
vpc_calc_geometry(uint64_t n_sectors, struct vpc_geometry *g)
{
    uint64_t spt, heads, cth;

    if (n_sectors > VPC_MAX_CHS_SECTORS)
        n_sectors = VPC_MAX_CHS_SECTORS;
    if (n_sectors >= UINT64_C(65535) * 16 * 63) {
        spt = 255;
        heads = 16;
        cth = n_sectors / spt;
    } else {
        spt = 17;
        cth = n_sectors / spt;
        heads = (cth + 1023) / 1024;
        if (heads < 4)
            heads = 4;
        if (cth >= heads * 1024 || heads > 16) {
            spt = 31;
            heads = 16;
            cth = n_sectors / spt;
        }
        if (cth >= heads * 1024) {
            spt = 63;
            heads = 16;
            cth = n_sectors / spt;
        }
    }
    g->cylinders = (uint16_t)(cth / heads);
    g->heads = (uint8_t)heads;
    g->sectors = (uint8_t)spt;
}

static uint64_t
vpc_chs_sectors(const struct vpc_geometry *g)
{
    return (uint64_t)g->cylinders * g->heads * g->sectors;
}

struct vpc_create_params {
    bool is_fixed;
    bool is_forced;             /* force_size */
    uint64_t size;              /* as given, then current_size: a multiple of the sector */
    struct vpc_geometry geometry;
};

/*
 * Without force_size the size grows to the first geometry that holds it, and
 * that geometry's size becomes the disk size; with it, or past the largest
 * geometry, the size is kept, as qemu-img does.
 */
static int
vpc_size_params(struct vpc_create_params *p, struct vimg_error *err)
{
    uint64_t n_sectors = p->size / VPC_SECTOR_SIZE + (p->size % VPC_SECTOR_SIZE != 0);

    if (n_sectors > VPC_MAX_SECTORS)
        return vimg_error_set(err, EFBIG, "The image size is too large for file format 'vpc'");
    if (p->is_forced || n_sectors >= VPC_MAX_CHS_SECTORS) {
        /* The largest geometry tells readers to use current_size instead. */
        vpc_calc_geometry(VPC_MAX_CHS_SECTORS, &p->geometry);
    } else {
        /* An empty disk keeps the geometry 0/0/0. */
        memset(&p->geometry, 0, sizeof(p->geometry));
        for (uint64_t i = 0; vpc_chs_sectors(&p->geometry) < n_sectors; i++)
            vpc_calc_geometry(n_sectors + i, &p->geometry);
        n_sectors = vpc_chs_sectors(&p->geometry);
    }
    p->size = n_sectors * VPC_SECTOR_SIZE;
    return 0;
}

static int
vpc_parse_create(struct vimg_opts *opts, struct vpc_create_params *p, struct vimg_error *err)
{
    const char *sub = vimg_opts_get(opts, "subformat");
    bool is_forced;
    int ret;

    memset(p, 0, sizeof(*p));
    if (sub && strcmp(sub, "fixed") == 0)
        p->is_fixed = true;
    else if (sub && strcmp(sub, "dynamic") != 0)
        return vimg_error_set(err, EINVAL, "Parameter 'subformat' does not accept value '%s'",
                              sub);
    if ((ret = vimg_opts_get_bool(opts, "force_size", false, &is_forced, err)) < 0)
        return ret;
    if (!vimg_opts_has(opts, "size"))
        return vimg_error_set(err, EINVAL, "Image creation needs a size parameter");
    if ((ret = vimg_opts_get_size(opts, "size", 0, &p->size, err)) < 0)
        return ret;
    p->is_forced = is_forced;
    return 0;
}

/* A random (version 4) UUID. */
static int
vpc_make_uuid(uint8_t uuid[16], struct vimg_error *err)
{
    if (getrandom(uuid, 16, 0) != 16)
        return vimg_error_set_errno(err, errno, "Could not generate a UUID");
    uuid[6] = (uint8_t)((uuid[6] & 0x0f) | 0x40);
    uuid[8] = (uint8_t)((uuid[8] & 0x3f) | 0x80);
    return 0;
}

static int
vpc_encode_footer(const struct vpc_create_params *p, uint8_t *buf, struct vimg_error *err)
{
    int64_t now = (int64_t)time(NULL) - VPC_TIME_EPOCH;
    int ret;

    memset(buf, 0, VPC_FOOTER_SIZE);
    memcpy(buf + VPC_FOOTER_OFF_COOKIE, "conectix", 8);
    vpc_put_be32(buf + VPC_FOOTER_OFF_FEATURES, VPC_FEATURES_RESERVED);
    vpc_put_be32(buf + VPC_FOOTER_OFF_VERSION, VPC_VERSION);
    vpc_put_be64(buf + VPC_FOOTER_OFF_DATA_OFFSET, p->is_fixed ? UINT64_MAX
                                                               : VPC_FOOTER_SIZE);
    vpc_put_be32(buf + VPC_FOOTER_OFF_TIMESTAMP, (uint32_t)(now > 0 ? now : 0));
    /* "qem2" marks a size that is not a whole geometry (force_size). */
    memcpy(buf + VPC_FOOTER_OFF_CREATOR_APP, p->is_forced ? "qem2" : "qemu", 4);
    vpc_put_be32(buf + VPC_FOOTER_OFF_CREATOR_VER, VPC_CREATOR_VERSION);
    memcpy(buf + VPC_FOOTER_OFF_CREATOR_OS, "Wi2k", 4);
    vpc_put_be64(buf + VPC_FOOTER_OFF_ORIG_SIZE, p->size);
    vpc_put_be64(buf + VPC_FOOTER_OFF_CUR_SIZE, p->size);
    vpc_put_be16(buf + VPC_FOOTER_OFF_CYLINDERS, p->geometry.cylinders);
    buf[VPC_FOOTER_OFF_HEADS] = p->geometry.heads;
    buf[VPC_FOOTER_OFF_SECTORS] = p->geometry.sectors;
    vpc_put_be32(buf + VPC_FOOTER_OFF_DISK_TYPE, p->is_fixed ? VPC_DISK_FIXED : 3);
    if ((ret = vpc_make_uuid(buf + VPC_FOOTER_OFF_UUID, err)) < 0)
        return ret;
    vpc_put_be32(buf + VPC_FOOTER_OFF_CHECKSUM,
                 vpc_checksum(buf, VPC_FOOTER_SIZE, VPC_FOOTER_OFF_CHECKSUM));
    return 0;
}

static void
vpc_encode_dyn_header(uint32_t n_entries, uint8_t *buf)
{
    memset(buf, 0, VPC_DYN_HEADER_SIZE);
    memcpy(buf + VPC_DYN_OFF_COOKIE, "cxsparse", 8);
    vpc_put_be64(buf + VPC_DYN_OFF_DATA_OFFSET, UINT64_MAX);
    vpc_put_be64(buf + VPC_DYN_OFF_TABLE_OFFSET, VPC_FOOTER_SIZE + VPC_DYN_HEADER_SIZE);
    vpc_put_be32(buf + VPC_DYN_OFF_VERSION, VPC_VERSION);
    vpc_put_be32(buf + VPC_DYN_OFF_MAX_ENTRIES, n_entries);
    vpc_put_be32(buf + VPC_DYN_OFF_BLOCK_SIZE, VPC_CREATE_BLOCK_SIZE);
    vpc_put_be32(buf + VPC_DYN_OFF_CHECKSUM,
                 vpc_checksum(buf, VPC_DYN_HEADER_SIZE, VPC_DYN_OFF_CHECKSUM));
}

static uint64_t
vpc_bat_bytes(const struct vpc_create_params *p)
{
    uint64_t n_entries = (p->size + VPC_CREATE_BLOCK_SIZE - 1) / VPC_CREATE_BLOCK_SIZE;

    return (n_entries * 4 + VPC_SECTOR_SIZE - 1) & ~(uint64_t)(VPC_SECTOR_SIZE - 1);
}

static uint64_t
vpc_dynamic_file_size(const struct vpc_create_params *p)
{
    return VPC_FOOTER_SIZE + VPC_DYN_HEADER_SIZE + vpc_bat_bytes(p) + VPC_FOOTER_SIZE;
}

/*
 * Dynamic layout: footer copy, dynamic header, BAT (all unused, padded to a
 * sector), footer. Fixed: the data, then the footer.
 */
static int
vpc_write_new(struct vimg_node *file, const struct vpc_create_params *p,
              struct vimg_error *err)
{
    uint64_t n_entries = (p->size + VPC_CREATE_BLOCK_SIZE - 1) / VPC_CREATE_BLOCK_SIZE;
    uint64_t bat_bytes = vpc_bat_bytes(p);
    uint64_t len = vpc_dynamic_file_size(p);
    uint8_t *buf;
    int ret;

    if (p->is_fixed) {
        uint8_t footer[VPC_FOOTER_SIZE];
        if ((ret = vpc_encode_footer(p, footer, err)) < 0)
            return ret;
        return vimg_node_pwrite(file, p->size, footer, sizeof(footer), 0, err);
    }
    if (!(buf = malloc(len)))
        return vimg_error_set(err, ENOMEM, "Out of memory");
    if ((ret = vpc_encode_footer(p, buf, err)) == 0) {
        vpc_encode_dyn_header((uint32_t)n_entries, buf + VPC_FOOTER_SIZE);
        memset(buf + VPC_FOOTER_SIZE + VPC_DYN_HEADER_SIZE, 0xff, bat_bytes);
        memcpy(buf + len - VPC_FOOTER_SIZE, buf, VPC_FOOTER_SIZE);
        ret = vimg_node_pwrite(file, 0, buf, len, 0, err);
    }
    free(buf);
    return ret;
}

static int
vpc_create(const char *filename, struct vimg_opts *opts, struct vimg_error *err)
{
    struct vpc_create_params p;
    struct vimg_node *file;
    int ret;

    if ((ret = vpc_parse_create(opts, &p, err)) < 0 ||
        (ret = vimg_create_file_empty(filename, opts, err)) < 0)
        return ret;
    /* qemu-img checks the size once the file exists, and leaves it behind. */
    if ((ret = vpc_size_params(&p, err)) < 0)
        return ret;
    ret = vimg_open(&file, filename, NULL, NULL, VIMG_OPEN_RDWR | VIMG_OPEN_PROTOCOL, err);
    if (ret < 0)
        return ret;
    /* A new root file is written only inside its length: grow it first. */
    ret = vimg_node_truncate(file, p.is_fixed ? p.size + VPC_FOOTER_SIZE
                                              : vpc_dynamic_file_size(&p), false, NULL, err);
    if (ret == 0)
        ret = vpc_write_new(file, &p, err);
    if (ret == 0)
        ret = vimg_node_flush(file, err);
    vimg_close(file);
    return ret;
}

static const char *const vpc_strong_opts[] = { "force_size_calc", NULL };

const struct vimg_driver vimg_vpc_driver = {
    .name = "vpc",
    .kind = VIMG_DRIVER_FORMAT,
    .state_size = sizeof(struct vpc_state),
    .has_zero_init = true,
    .supports_backing = true,       /* differencing disks only */
    .strong_opts = vpc_strong_opts,
    .probe = vpc_probe,
    .open = vpc_open,
    .close = vpc_close,
    .create_opts = vpc_create_opts,
    .create = vpc_create,
    .preadv = vpc_preadv,
    .pwritev = vpc_pwritev,
    .flush = vpc_flush,
    .block_status = vpc_block_status,
    .length = vpc_length,
};
