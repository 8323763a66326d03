/*
 * The vmdk format: VMware virtual disks as libyal/libvmdk's "VMWare Virtual
 * Disk Format (VMDK)" describes them (SPECS.md, "VMDK"): text descriptor
 * files, hosted sparse extents ("KDMV", versions 1-3, with grain markers and
 * deflate-compressed grains for streamOptimized), VMware 3 sparse extents
 * ("COWD"), flat and zero extents, and the parent chain through
 * parentFileNameHint.
 *
 * Creation writes monolithicSparse, monolithicFlat, twoGbMaxExtentSparse,
 * twoGbMaxExtentFlat and streamOptimized images laid out as qemu-img 7.2 lays
 * them out. Writes allocate grains at the end of the extent file and update
 * the grain table (and its redundant copy) after the data; a compressed
 * extent takes each grain once, compressed (deflate, in the writers' threads
 * so that convert's workers compress in parallel; with libdeflate when
 * built in), behind a grain marker. As qemu-img 7.2, a stream-optimized
 * image keeps its grain directory at the front and gets no footer or
 * end-of-stream marker, and `convert` to it writes whole grains (-c implied).
 * `check` reports the first grain past the end of its file, as qemu-img.
 *
 * SESparse extents (VMware's "space efficient sparse" snapshots, spec
 * "SESparse extent") open read-only, as in qemu-img 7.2: a constant header
 * with 64-bit (offset, size) pairs in sectors, a volatile header, a grain
 * directory of 64-bit entries (0x1 in the top nibble: grain table n of the
 * tables area, whose top 32 bits must read 0x10000000) and grain tables of
 * 4096 64-bit entries (top nibble 0 unallocated, 1 unmapped and 2 zero read
 * as zeros, 3 allocated: cluster c of the grains area stored as
 * (c & 0xfff) << 48 | c >> 12). No sample exists: the generator
 * tests/helpers/mk-sesparse.py and qemu-img's answers to its images are what
 * the checks, messages and arithmetic here were matched against, including
 * qemu-img's wrap-around of sector offsets times 512 in 64 bits.
 *
 * Left out: snapshots and resizing.
 */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include <zlib.h>

#include "config.h"
#include "core/driver.h"

#ifdef VIMG_HAVE_LIBDEFLATE
#include <libdeflate.h>
#endif

#define VMDK_SECTOR             512
#define VMDK_MAX_DESC_SIZE      (UINT64_C(2) << 20)

/* Hosted sparse extent header (spec "VMDK sparse extent header"). */
#define VMDK4_MAGIC             0x564d444bu     /* "KDMV" */
#define VMDK4_OFF_MAGIC         0
#define VMDK4_OFF_VERSION       4
#define VMDK4_OFF_FLAGS         8
#define VMDK4_OFF_CAPACITY      12      /* LE64, sectors */
#define VMDK4_OFF_GRAIN         20      /* LE64, sectors */
#define VMDK4_OFF_DESC_OFFSET   28      /* LE64, sectors */
#define VMDK4_OFF_DESC_SIZE     36      /* LE64, sectors */
#define VMDK4_OFF_N_GTES        44      /* LE32 */
#define VMDK4_OFF_RGD_OFFSET    48      /* LE64, sectors */
#define VMDK4_OFF_GD_OFFSET     56      /* LE64, sectors */
#define VMDK4_OFF_OVERHEAD      64      /* LE64, sectors */
#define VMDK4_OFF_UNCLEAN       72      /* u8 */
#define VMDK4_OFF_NL_TEST       73      /* "\n \r\n" */
#define VMDK4_OFF_COMPRESS      77      /* LE16 */
#define VMDK4_HEADER_SIZE       79

#define VMDK4_FLAG_NL_TEST      0x00001u
#define VMDK4_FLAG_RGD          0x00002u
#define VMDK4_FLAG_ZERO_GRAIN   0x00004u
#define VMDK4_FLAG_COMPRESS     0x10000u
#define VMDK4_FLAG_MARKER       0x20000u
#define VMDK4_COMPRESS_DEFLATE  1
#define VMDK4_GD_AT_END         UINT64_MAX

/* Grain marker (spec "Stream optimized sparse extent"): LE64 lba, LE32 size, data. */
#define VMDK_MARKER_OFF_LBA     0
#define VMDK_MARKER_OFF_SIZE    8
#define VMDK_MARKER_OFF_TYPE    12
#define VMDK_MARKER_HEADER      12
#define VMDK_MARKER_FOOTER      3

/* VMware 3 sparse extent header ("COWD"). */
#define VMDK3_MAGIC             0x44574f43u     /* "COWD" */
#define VMDK3_OFF_CAPACITY      12      /* LE32, sectors */
#define VMDK3_OFF_GRAIN         16      /* LE32, sectors */
#define VMDK3_OFF_GD_OFFSET     20      /* LE32, sectors */
#define VMDK3_OFF_N_GD          24      /* LE32 */
#define VMDK3_N_GTES            4096

/* SESparse extent: constant header (26 LE64 fields, then zero padding to 512 bytes). */
#define SES_CONST_MAGIC         UINT64_C(0xcafebabe)
#define SES_VOLATILE_MAGIC      UINT64_C(0xcafecafe)
#define SES_VERSION             UINT64_C(0x200000001)
#define SES_OFF_MAGIC           0
#define SES_OFF_VERSION         8
#define SES_OFF_CAPACITY        16      /* sectors */
#define SES_OFF_GRAIN           24      /* sectors: 8 */
#define SES_OFF_GT_SIZE         32      /* sectors: 64 */
#define SES_OFF_FLAGS           40
#define SES_OFF_RESERVED        48      /* 4 x LE64 */
#define SES_OFF_VOLATILE        80      /* LE64 offset, LE64 size, sectors */
#define SES_OFF_GD              128
#define SES_OFF_GT              144
#define SES_OFF_GRAINS          192
#define SES_OFF_CONST_PAD       208
/* Volatile header: magic, free grain table number, next transaction, replay journal. */
#define SES_VOFF_MAGIC          0
#define SES_VOFF_REPLAY         24
#define SES_VOFF_PAD            32
#define SES_GRAIN_SECTORS       8
#define SES_GT_SECTORS          64
#define SES_N_GTES              (SES_GT_SECTORS * VMDK_SECTOR / 8)
#define SES_GDE_ALLOCATED       UINT64_C(0x1000000000000000)
#define SES_MAX_L1_ENTRIES      (UINT32_C(32) * 1024 * 1024)
/* Past this, qemu-img's block layer refuses a request with EIO. */
#define SES_MAX_IO_OFFSET       (UINT64_C(0x7fffffffffffffff) & ~((UINT64_C(1) << 30) - 1))

/* Limits as qemu-img 7.2 enforces them. */
#define VMDK_MAX_GRAIN_SECTORS  (UINT64_C(1) << 16)
#define VMDK_MAX_N_GTES         512
#define VMDK_MAX_L1_ENTRIES     (UINT64_C(512) * 1024 * 1024 / 4)
#define VMDK_GTE_ZERO           1u

#define VMDK_CREATE_GRAIN       128     /* sectors */
#define VMDK_CREATE_N_GTES      512
#define VMDK_CREATE_DESC_SECTORS 20
#define VMDK_SPLIT_SECTORS      (UINT64_C(2) << 30 >> 9)
#define VMDK_MAX_CID_TRIES      1

enum vmdk_extent_type {
    VMDK_EXTENT_FLAT,
    VMDK_EXTENT_ZERO,
    VMDK_EXTENT_SPARSE,
};

struct vmdk_extent {
    enum vmdk_extent_type type;
    struct vimg_node *file;         /* node->file or an owned child */
    bool is_owned;
    char *type_name;                /* as the descriptor spells it; "" when none */
    uint64_t n_sectors;
    uint64_t end;                   /* bytes: where the extent ends in the disk */
    uint64_t flat_offset;           /* bytes, FLAT */
    /* SPARSE */
    bool is_cowd;
    bool is_compressed;
    bool has_markers;
    bool has_zero_grain;
    uint64_t grain_size;            /* bytes */
    uint32_t n_gtes;                /* grain table entries per grain table */
    uint64_t n_gd;                  /* grain directory entries */
    uint32_t *gd;                   /* sector offsets of the grain tables */
    uint32_t *rgd;                  /* redundant directory, or NULL */
    uint32_t *gt;                   /* cache: one grain table */
    uint64_t gt_index;              /* which one; UINT64_MAX = none */
    uint64_t next_sector;           /* allocation point in the extent file */
    /* SESPARSE (also SPARSE in type, grain_size 4096, n_gtes 4096; read-only) */
    bool is_sesparse;
    uint64_t se_gt_sector;          /* the grain tables area */
    uint64_t se_grains_sector;      /* the grains area */
    uint64_t n_gd_loaded;           /* entries of gd64 read; the rest are 0 */
    uint64_t *gd64;
    uint64_t *gt64;                 /* cache: the grain table at sector gt_index */
};

struct vmdk_desc {
    uint32_t cid;
    uint32_t parent_cid;
    char create_type[64];
    bool has_create_type;
    char parent_hint[512];
    bool has_parent;
};

#define VMDK_DEFLATE_LEVEL      6       /* zlib's default, which qemu-img uses */
#define VMDK_MAX_COMPRESSORS    16

struct vmdk_state {
    pthread_mutex_t lock;           /* protects the extents' caches and allocation */
    pthread_mutex_t zlock;          /* protects compressors and n_compressors */
    void *compressors[VMDK_MAX_COMPRESSORS];   /* idle libdeflate compressors */
    size_t n_compressors;
    struct vmdk_extent *extents;
    size_t n_extents;
    struct vmdk_desc desc;
    uint64_t size;
    bool is_parent_checked;         /* the parent's CID matched once; not asked again */
    _Atomic bool is_cid_updated;    /* this open gave the image a new CID (first write) */
};

static uint16_t
vmdk_le16(const uint8_t *p)
{
    return (uint16_t)(p[0] | p[1] << 8);
}

static uint32_t
vmdk_le32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t
vmdk_le64(const uint8_t *p)
{
    return (uint64_t)vmdk_le32(p) | (uint64_t)vmdk_le32(p + 4) << 32;
}

static void
vmdk_put_le16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
}

static void
vmdk_put_le32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static void
vmdk_put_le64(uint8_t *p, uint64_t v)
{
    vmdk_put_le32(p, (uint32_t)v);
    vmdk_put_le32(p + 4, (uint32_t)(v >> 32));
}

static bool
vmdk_is_descriptor_text(const uint8_t *buf, size_t len)
{
    static const char sig[] = "# Disk DescriptorFile";

    return len >= sizeof(sig) - 1 && memcmp(buf, sig, sizeof(sig) - 1) == 0;
}

static int
vmdk_probe(const uint8_t *buf, size_t len, const char *filename)
{
    uint32_t magic;

    (void)filename;
    if (len < 4)
        return 0;
    magic = vmdk_le32(buf);
    if (magic == VMDK4_MAGIC || magic == VMDK3_MAGIC)
        return 100;
    return vmdk_is_descriptor_text(buf, len) ? 100 : 0;
}

/* Descriptor text */

/* The value of "key=value" or "key = "value"" in line, unquoted, or NULL. */
static bool
vmdk_desc_value(const char *line, const char *key, char *out, size_t out_size)
{
    size_t klen = strlen(key), n;
    const char *p = line;

    if (strncmp(p, key, klen) != 0)
        return false;
    p += klen;
    while (*p == ' ' || *p == '\t')
        p++;
    if (*p++ != '=')
        return false;
    while (*p == ' ' || *p == '\t')
        p++;
    if (*p == '"') {
        const char *q = strchr(++p, '"');
        n = q ? (size_t)(q - p) : strlen(p);
    } else {
        n = strcspn(p, " \t\r");
    }
    if (n >= out_size)
        n = out_size - 1;
    memcpy(out, p, n);
    out[n] = '\0';
    return true;
}

static uint32_t
vmdk_parse_cid(const char *s)
{
    return (uint32_t)strtoul(s, NULL, 16);
}

static void
vmdk_parse_desc_line(const char *line, struct vmdk_desc *d)
{
    char v[512];

    if (vmdk_desc_value(line, "CID", v, sizeof(v)))
        d->cid = vmdk_parse_cid(v);
    else if (vmdk_desc_value(line, "parentCID", v, sizeof(v)))
        d->parent_cid = vmdk_parse_cid(v);
    else if (vmdk_desc_value(line, "createType", v, sizeof(d->create_type))) {
        memcpy(d->create_type, v, strlen(v) + 1);
        d->has_create_type = true;
    } else if (vmdk_desc_value(line, "parentFileNameHint", v, sizeof(v))) {
        snprintf(d->parent_hint, sizeof(d->parent_hint), "%s", v);
        d->has_parent = v[0] != '\0';
    }
}

/*
 * Calls fn for each line of text (len bytes, NUL bytes end it); lines are
 * copied into a bounded buffer so the parsers see C strings.
 */
static int
vmdk_desc_lines(const char *text, size_t len,
                int (*fn)(const char *line, void *ctx), void *ctx)
{
    char line[1024];
    size_t pos = 0;

    while (pos < len && text[pos]) {
        size_t n = 0;
        int ret;

        while (pos < len && text[pos] && text[pos] != '\n') {
            if (n < sizeof(line) - 1)
                line[n++] = text[pos];
            pos++;
        }
        if (pos < len && text[pos] == '\n')
            pos++;
        while (n && line[n - 1] == '\r')
            n--;
        line[n] = '\0';
        if ((ret = fn(line, ctx)) < 0)
            return ret;
    }
    return 0;
}

static int
vmdk_desc_line_cb(const char *line, void *ctx)
{
    vmdk_parse_desc_line(line, ctx);
    return 0;
}

static void
vmdk_parse_desc(const char *text, size_t len, struct vmdk_desc *d)
{
    memset(d, 0, sizeof(*d));
    d->parent_cid = UINT32_MAX;
    (void)vmdk_desc_lines(text, len, vmdk_desc_line_cb, d);
}

/* Extents */

static struct vmdk_extent *
vmdk_add_extent(struct vmdk_state *s, struct vimg_error *err)
{
    struct vmdk_extent *e;

    e = realloc(s->extents, (s->n_extents + 1) * sizeof(*e));
    if (!e) {
        vimg_error_set(err, ENOMEM, "Out of memory");
        return NULL;
    }
    s->extents = e;
    e = &s->extents[s->n_extents++];
    memset(e, 0, sizeof(*e));
    e->gt_index = UINT64_MAX;
    return e;
}

static void
vmdk_free_extent(struct vmdk_extent *e)
{
    if (e->is_owned)
        vimg_close(e->file);
    free(e->type_name);
    free(e->gd);
    free(e->rgd);
    free(e->gt);
    free(e->gd64);
    free(e->gt64);
}

static int
vmdk_load_dir(struct vmdk_extent *e, uint64_t sector, uint32_t **out, struct vimg_error *err)
{
    uint64_t bytes = e->n_gd * 4, offset, in_file;
    int64_t file_len;
    uint8_t *raw;
    uint32_t *dir;
    int ret;

    if (__builtin_mul_overflow(sector, VMDK_SECTOR, &offset))
        return vimg_error_set(err, EINVAL, "Grain directory offset is too large");
    if ((file_len = vimg_node_length(e->file, err)) < 0)
        return (int)file_len;
    /* What lies past the end of the file reads as zeros: only the rest is read and decoded. */
    in_file = offset >= (uint64_t)file_len ? 0 : (uint64_t)file_len - offset;
    if (in_file > bytes)
        in_file = bytes;
    raw = malloc(in_file + 1);
    dir = calloc(e->n_gd + 1, 4);
    if (!raw || !dir) {
        free(raw);
        free(dir);
        return vimg_error_set(err, ENOMEM, "Out of memory");
    }
    ret = vimg_node_pread_padded(e->file, offset, raw, in_file, err);
    for (uint64_t i = 0; ret == 0 && i < in_file / 4; i++)
        dir[i] = vmdk_le32(raw + i * 4);
    free(raw);
    if (ret < 0) {
        free(dir);
        return ret;
    }
    *out = dir;
    return 0;
}

/* Sizes the grain directory and loads it; l1 bounds before any allocation. */
static int
vmdk_setup_sparse(struct vmdk_extent *e, uint64_t gd_sector, uint64_t rgd_sector,
                  struct vimg_error *err)
{
    uint64_t grain_sectors = e->grain_size / VMDK_SECTOR;
    uint64_t per_gt = (uint64_t)e->n_gtes * grain_sectors;
    int64_t file_len;
    int ret;

    e->n_gd = e->n_sectors / per_gt + (e->n_sectors % per_gt != 0);
    if (e->n_gd > VMDK_MAX_L1_ENTRIES)
        return vimg_error_set(err, EFBIG, "L1 size too big");
    if (e->n_sectors > INT64_MAX / VMDK_SECTOR)
        return vimg_error_set(err, EINVAL, "Image capacity %" PRIu64 " sectors is too large",
                              e->n_sectors);
    if (!(e->gt = malloc((size_t)e->n_gtes * 4)))
        return vimg_error_set(err, ENOMEM, "Out of memory");
    if ((ret = vmdk_load_dir(e, gd_sector, &e->gd, err)) < 0)
        return ret;
    if (rgd_sector && (ret = vmdk_load_dir(e, rgd_sector, &e->rgd, err)) < 0)
        return ret;
    if ((file_len = vimg_node_length(e->file, err)) < 0)
        return (int)file_len;
    e->next_sector = ((uint64_t)file_len + VMDK_SECTOR - 1) / VMDK_SECTOR;
    return 0;
}

static int
vmdk_open_cowd(struct vmdk_extent *e, const uint8_t *h, struct vimg_error *err)
{
    uint64_t grain = vmdk_le32(h + VMDK3_OFF_GRAIN);

    e->is_cowd = true;
    e->n_sectors = vmdk_le32(h + VMDK3_OFF_CAPACITY);
    if (grain == 0 || grain > VMDK_MAX_GRAIN_SECTORS || (grain & (grain - 1)))
        return vimg_error_set(err, EINVAL, "Invalid granularity, image may be corrupt");
    e->grain_size = grain * VMDK_SECTOR;
    e->n_gtes = VMDK3_N_GTES;
    return vmdk_setup_sparse(e, vmdk_le32(h + VMDK3_OFF_GD_OFFSET), 0, err);
}

/* A streamOptimized extent keeps its real header in the footer at the end. */
static int
vmdk_read_footer(struct vmdk_extent *e, uint8_t *h, struct vimg_error *err)
{
    int64_t len = vimg_node_length(e->file, err);
    uint8_t buf[2 * VMDK_SECTOR];
    int ret;

    if (len < 0)
        return (int)len;
    if (len < 3 * VMDK_SECTOR)
        return vimg_error_set(err, EINVAL, "File truncated, expecting at least %d bytes",
                              3 * VMDK_SECTOR);
    if ((ret = vimg_node_pread_padded(e->file, (uint64_t)len - 3 * VMDK_SECTOR, buf,
                                      sizeof(buf), err)) < 0)
        return ret;
    if (vmdk_le32(buf + VMDK_MARKER_OFF_TYPE) != VMDK_MARKER_FOOTER ||
        vmdk_le32(buf + VMDK_SECTOR) != VMDK4_MAGIC)
        return vimg_error_set(err, EINVAL, "Invalid footer");
    memcpy(h, buf + VMDK_SECTOR, VMDK_SECTOR);
    return 0;
}

static int
vmdk_open_kdmv(struct vmdk_extent *e, uint8_t *h, struct vimg_error *err)
{
    uint32_t version = vmdk_le32(h + VMDK4_OFF_VERSION), flags;
    uint64_t grain, gd, rgd;
    int ret;

    if (vmdk_le64(h + VMDK4_OFF_GD_OFFSET) == VMDK4_GD_AT_END &&
        (ret = vmdk_read_footer(e, h, err)) < 0)
        return ret;
    if (version > 3)
        return vimg_error_set(err, ENOTSUP, "Unsupported VMDK version %" PRIu32, version);
    flags = vmdk_le32(h + VMDK4_OFF_FLAGS);
    e->n_sectors = vmdk_le64(h + VMDK4_OFF_CAPACITY);
    grain = vmdk_le64(h + VMDK4_OFF_GRAIN);
    if (grain == 0 || grain > VMDK_MAX_GRAIN_SECTORS || (grain & (grain - 1)))
        return vimg_error_set(err, EINVAL, "Invalid granularity, image may be corrupt");
    e->grain_size = grain * VMDK_SECTOR;
    e->n_gtes = vmdk_le32(h + VMDK4_OFF_N_GTES);
    if (e->n_gtes == 0 || e->n_gtes > VMDK_MAX_N_GTES)
        return vimg_error_set(err, EINVAL, "L2 table size too big");
    e->is_compressed = (flags & VMDK4_FLAG_COMPRESS) &&
                       vmdk_le16(h + VMDK4_OFF_COMPRESS) == VMDK4_COMPRESS_DEFLATE;
    e->has_markers = flags & VMDK4_FLAG_MARKER;
    e->has_zero_grain = flags & VMDK4_FLAG_ZERO_GRAIN;
    gd = vmdk_le64(h + VMDK4_OFF_GD_OFFSET);
    rgd = (flags & VMDK4_FLAG_RGD) ? vmdk_le64(h + VMDK4_OFF_RGD_OFFSET) : 0;
    return vmdk_setup_sparse(e, gd, rgd, err);
}

/* Reads from a SESparse extent file, refusing what qemu-img's block layer refuses. */
static int
vmdk_se_pread(struct vmdk_extent *e, uint64_t offset, void *buf, uint64_t bytes,
              struct vimg_error *err)
{
    if (offset > SES_MAX_IO_OFFSET || bytes > SES_MAX_IO_OFFSET - offset)
        return vimg_error_set(err, EIO, "Input/output error");
    return vimg_node_pread_padded(e->file, offset, buf, bytes, err);
}

static int
vmdk_se_check_const(const uint8_t *h, struct vimg_error *err)
{
    uint64_t v;

    if ((v = vmdk_le64(h + SES_OFF_MAGIC)) != SES_CONST_MAGIC)
        return vimg_error_set(err, EINVAL, "Bad const header magic: 0x%016" PRIx64, v);
    if ((v = vmdk_le64(h + SES_OFF_VERSION)) != SES_VERSION)
        return vimg_error_set(err, ENOTSUP, "Unsupported version: 0x%016" PRIx64, v);
    if ((v = vmdk_le64(h + SES_OFF_GRAIN)) != SES_GRAIN_SECTORS)
        return vimg_error_set(err, ENOTSUP, "Unsupported grain size: %" PRIu64, v);
    if ((v = vmdk_le64(h + SES_OFF_GT_SIZE)) != SES_GT_SECTORS)
        return vimg_error_set(err, ENOTSUP, "Unsupported grain table size: %" PRIu64, v);
    if ((v = vmdk_le64(h + SES_OFF_FLAGS)) != 0)
        return vimg_error_set(err, ENOTSUP, "Unsupported flags: 0x%016" PRIx64, v);
    if (!vimg_buffer_is_zero(h + SES_OFF_RESERVED, 32))
        return vimg_error_set(err, ENOTSUP, "Unsupported reserved bits: 0x%016" PRIx64
                              " 0x%016" PRIx64 " 0x%016" PRIx64 " 0x%016" PRIx64,
                              vmdk_le64(h + SES_OFF_RESERVED),
                              vmdk_le64(h + SES_OFF_RESERVED + 8),
                              vmdk_le64(h + SES_OFF_RESERVED + 16),
                              vmdk_le64(h + SES_OFF_RESERVED + 24));
    if (!vimg_buffer_is_zero(h + SES_OFF_CONST_PAD, VMDK_SECTOR - SES_OFF_CONST_PAD))
        return vimg_error_set(err, ENOTSUP, "Unsupported non-zero const header padding");
    return 0;
}

static int
vmdk_se_check_volatile(const uint8_t *v, struct vimg_error *err)
{
    uint64_t magic = vmdk_le64(v + SES_VOFF_MAGIC);

    if (magic != SES_VOLATILE_MAGIC)
        return vimg_error_set(err, EINVAL, "Bad volatile header magic: 0x%016" PRIx64, magic);
    if (vmdk_le64(v + SES_VOFF_REPLAY))
        return vimg_error_set(err, ENOTSUP, "Image is dirty, Replaying journal not supported");
    if (!vimg_buffer_is_zero(v + SES_VOFF_PAD, VMDK_SECTOR - SES_VOFF_PAD))
        return vimg_error_set(err, ENOTSUP, "Unsupported non-zero volatile header padding");
    return 0;
}

/*
 * Loads the grain directory: qemu-img sizes it from the header's size field
 * (a 32-bit count of 64-bit entries) and refuses a read of all of it past
 * its limit; only the entries that the capacity reaches and that lie inside
 * the file are kept, the others read as 0.
 */
static int
vmdk_se_load_dir(struct vmdk_extent *e, uint64_t gd_offset, uint64_t l1_size,
                 struct vimg_error *err)
{
    uint64_t needed = e->n_sectors / (SES_N_GTES * SES_GRAIN_SECTORS) +
                      (e->n_sectors % (SES_N_GTES * SES_GRAIN_SECTORS) != 0);
    uint64_t n = l1_size < needed ? l1_size : needed, in_file;
    int64_t file_len;
    uint8_t *raw;
    int ret;

    if (gd_offset > SES_MAX_IO_OFFSET || l1_size * 8 > SES_MAX_IO_OFFSET - gd_offset)
        return vimg_error_set(err, EIO, "Could not read l1 table from extent '%s': "
                              "Input/output error", e->file->filename);
    if ((file_len = vimg_node_length(e->file, err)) < 0)
        return (int)file_len;
    in_file = gd_offset >= (uint64_t)file_len ? 0 : ((uint64_t)file_len - gd_offset) / 8;
    if (n > in_file)
        n = in_file;
    raw = malloc(n * 8 + 1);
    e->gd64 = calloc(n + 1, 8);
    if (!raw || !e->gd64) {
        free(raw);
        return vimg_error_set(err, ENOMEM, "Out of memory");
    }
    ret = vimg_node_pread_padded(e->file, gd_offset, raw, n * 8, err);
    for (uint64_t i = 0; ret == 0 && i < n; i++)
        e->gd64[i] = vmdk_le64(raw + i * 8);
    free(raw);
    if (ret < 0)
        return vimg_error_set(err, -ret, "Could not read l1 table from extent '%s': %s",
                              e->file->filename, strerror(-ret));
    e->n_gd_loaded = n;
    return 0;
}

/* Opens the SESparse extent in e->file (read-only: the caller refuses RDWR). */
static int
vmdk_open_sesparse(struct vmdk_extent *e, struct vimg_error *err)
{
    uint8_t h[VMDK_SECTOR], v[VMDK_SECTOR];
    uint64_t l1_size;
    int ret;

    if ((ret = vimg_node_pread_padded(e->file, 0, h, sizeof(h), err)) < 0)
        return vimg_error_set(err, -ret, "Could not read const header from file '%s': %s",
                              e->file->filename, strerror(-ret));
    if ((ret = vmdk_se_check_const(h, err)) < 0)
        return ret;
    /* Sector offsets times 512 wrap in 64 bits, as in qemu-img. */
    if ((ret = vmdk_se_pread(e, vmdk_le64(h + SES_OFF_VOLATILE) * VMDK_SECTOR, v, sizeof(v),
                             err)) < 0)
        return vimg_error_set(err, -ret, "Could not read volatile header from file '%s': %s",
                              e->file->filename, strerror(-ret));
    if ((ret = vmdk_se_check_volatile(v, err)) < 0)
        return ret;
    e->type = VMDK_EXTENT_SPARSE;
    e->is_sesparse = true;
    e->n_sectors = vmdk_le64(h + SES_OFF_CAPACITY);
    e->grain_size = SES_GRAIN_SECTORS * VMDK_SECTOR;
    e->n_gtes = SES_N_GTES;
    /* The entry count is 32 bits wide in qemu-img: larger sizes wrap. */
    l1_size = (uint32_t)(vmdk_le64(h + SES_OFF_GD + 8) * VMDK_SECTOR / 8);
    if (l1_size > SES_MAX_L1_ENTRIES)
        return vimg_error_set(err, EFBIG, "L1 size too big");
    if (e->n_sectors > INT64_MAX / VMDK_SECTOR)
        return vimg_error_set(err, EINVAL, "Image capacity %" PRIu64 " sectors is too large",
                              e->n_sectors);
    e->n_gd = l1_size;
    e->se_gt_sector = vmdk_le64(h + SES_OFF_GT);
    e->se_grains_sector = vmdk_le64(h + SES_OFF_GRAINS);
    if (!(e->gt64 = malloc(SES_N_GTES * 8)))
        return vimg_error_set(err, ENOMEM, "Out of memory");
    return vmdk_se_load_dir(e, vmdk_le64(h + SES_OFF_GD) * VMDK_SECTOR, l1_size, err);
}

/* Opens the sparse extent in e->file; desc receives its embedded descriptor when asked. */
static int
vmdk_open_sparse(struct vmdk_extent *e, struct vmdk_desc *desc, struct vimg_error *err)
{
    uint8_t h[VMDK_SECTOR];
    int ret;

    if ((ret = vimg_node_pread_padded(e->file, 0, h, sizeof(h), err)) < 0)
        return ret;
    e->type = VMDK_EXTENT_SPARSE;
    if (vmdk_le32(h + VMDK4_OFF_MAGIC) == VMDK3_MAGIC)
        return vmdk_open_cowd(e, h, err);
    if (vmdk_le32(h + VMDK4_OFF_MAGIC) != VMDK4_MAGIC)
        return vimg_error_set(err, EINVAL, "Invalid magic number in sparse extent '%s'",
                              e->file->filename);
    if (desc) {
        uint64_t off = vmdk_le64(h + VMDK4_OFF_DESC_OFFSET);
        uint64_t size = vmdk_le64(h + VMDK4_OFF_DESC_SIZE);
        char *text;

        vmdk_parse_desc("", 0, desc);
        if (size > VMDK_MAX_DESC_SIZE / VMDK_SECTOR || off > UINT64_MAX / VMDK_SECTOR)
            return vimg_error_set(err, EFBIG, "File too large");
        if (off && size) {
            if (!(text = malloc(size * VMDK_SECTOR)))
                return vimg_error_set(err, ENOMEM, "Out of memory");
            ret = vimg_node_pread_padded(e->file, off * VMDK_SECTOR, text,
                                         size * VMDK_SECTOR, err);
            if (ret == 0)
                vmdk_parse_desc(text, size * VMDK_SECTOR, desc);
            free(text);
            if (ret < 0)
                return ret;
        }
    }
    return vmdk_open_kdmv(e, h, err);
}

struct vmdk_parse_ctx {
    struct vimg_node *node;
    unsigned flags;
    struct vimg_error *err;
};

static int
vmdk_open_extent_file(struct vmdk_parse_ctx *c, struct vmdk_extent *e, const char *name)
{
    struct vimg_opts *o = vimg_opts_new();
    int ret;

    if (!o)
        return vimg_error_set(c->err, ENOMEM, "Out of memory");
    ret = vimg_open_child(&e->file, c->node, "extent", name, NULL, o,
                          (c->flags & VIMG_OPEN_RDWR) | VIMG_OPEN_PROTOCOL, c->err);
    vimg_opts_free(o);
    if (ret < 0) {
        vimg_error_prefix(c->err, "Could not open '%s': ", name);
        return ret;
    }
    e->is_owned = true;
    return 0;
}

/* RW|RDONLY|NOACCESS <sectors> <type> "<file>" [<offset>] */
static int
vmdk_parse_extent_line(const char *line, void *ctx)
{
    struct vmdk_parse_ctx *c = ctx;
    struct vmdk_state *s = c->node->state;
    char access[11], type[11], name[512];
    long long sectors, offset = 0;
    struct vmdk_extent *e;
    int n, ret;

    n = sscanf(line, "%10s %lld %10s \"%511[^\n\r\"]\" %lld", access, &sectors, type, name,
               &offset);
    /* As qemu-img: only RW lines of a kind it reads count; ZERO, RDONLY, NOACCESS,
     * unknown kinds and empty extents are left out of the disk. */
    if (n < 4 || strcmp(access, "RW") || sectors <= 0 ||
        (strcmp(type, "FLAT") && strcmp(type, "VMFS") && strcmp(type, "SPARSE") &&
         strcmp(type, "VMFSSPARSE") && strcmp(type, "SESPARSE")))
        return 0;
    if (offset < 0 || (uint64_t)sectors > UINT64_MAX / VMDK_SECTOR ||
        (uint64_t)offset > UINT64_MAX / VMDK_SECTOR)
        return vimg_error_set(c->err, EINVAL, "Invalid extent line: %s", line);
    if (!(e = vmdk_add_extent(s, c->err)))
        return -ENOMEM;
    if (!(e->type_name = strdup(type)))
        return vimg_error_set(c->err, ENOMEM, "Out of memory");
    e->n_sectors = (uint64_t)sectors;
    if ((ret = vmdk_open_extent_file(c, e, name)) < 0)
        return ret;
    if (strcmp(type, "SESPARSE") == 0) {
        /* As qemu-img: the extent file opens first, then writing is refused. */
        if (c->flags & VIMG_OPEN_RDWR)
            return vimg_error_set(c->err, EACCES,
                                  "No write support for seSparse images available");
        /* The header's capacity, not the extent line's, sizes the extent. */
        return vmdk_open_sesparse(e, c->err);
    }
    if (strcmp(type, "FLAT") == 0 || strcmp(type, "VMFS") == 0) {
        e->type = VMDK_EXTENT_FLAT;
        e->flat_offset = (uint64_t)offset * VMDK_SECTOR;
        return 0;
    }
    if ((ret = vmdk_open_sparse(e, NULL, c->err)) < 0)
        return ret;
    e->n_sectors = (uint64_t)sectors;
    return 0;
}

static int
vmdk_open_descriptor(struct vimg_node *node, unsigned flags, struct vimg_error *err)
{
    struct vmdk_state *s = node->state;
    struct vmdk_parse_ctx c = { node, flags, err };
    int64_t len = vimg_node_length(node->file, err);
    char *text;
    int ret;

    if (len < 0)
        return (int)len;
    if ((uint64_t)len > VMDK_MAX_DESC_SIZE)
        return vimg_error_set(err, EFBIG, "File too large");
    if (!(text = malloc((size_t)len + 1)))
        return vimg_error_set(err, ENOMEM, "Out of memory");
    if ((ret = vimg_node_pread_padded(node->file, 0, text, (uint64_t)len, err)) < 0)
        goto out;
    text[len] = '\0';
    vmdk_parse_desc(text, (size_t)len, &s->desc);
    /* As qemu-img: a descriptor file needs a createType of a split or flat kind. */
    if (!s->desc.has_create_type) {
        ret = vimg_error_set(err, EINVAL, "invalid VMDK image descriptor");
        goto out;
    }
    if (strcmp(s->desc.create_type, "monolithicFlat") && strcmp(s->desc.create_type, "vmfs") &&
        strcmp(s->desc.create_type, "vmfsSparse") && strcmp(s->desc.create_type, "seSparse") &&
        strcmp(s->desc.create_type, "twoGbMaxExtentSparse") &&
        strcmp(s->desc.create_type, "twoGbMaxExtentFlat")) {
        ret = vimg_error_set(err, ENOTSUP, "Unsupported image type '%s'", s->desc.create_type);
        goto out;
    }
    ret = vmdk_desc_lines(text, (size_t)len, vmdk_parse_extent_line, &c);
out:
    free(text);
    return ret;
}

static void
vmdk_free_compressors(struct vmdk_state *s)
{
#ifdef VIMG_HAVE_LIBDEFLATE
    for (size_t i = 0; i < s->n_compressors; i++)
        libdeflate_free_compressor(s->compressors[i]);
#endif
    s->n_compressors = 0;
}

static void
vmdk_close(struct vimg_node *node)
{
    struct vmdk_state *s = node->state;

    for (size_t i = 0; i < s->n_extents; i++)
        vmdk_free_extent(&s->extents[i]);
    free(s->extents);
    s->extents = NULL;
    s->n_extents = 0;
    vmdk_free_compressors(s);
    pthread_mutex_destroy(&s->zlock);
    pthread_mutex_destroy(&s->lock);
}

#define VMDK_CID_AREA   (20 * VMDK_SECTOR)     /* where qemu-img looks for CIDs */

/*
 * The CID (or with is_parent the parentCID) as qemu-img reads it: the hex
 * number after the first occurrence of the key (and one more character, the
 * '=') in the first 20 sectors of the descriptor, which for an image with a
 * sparse header is taken at byte 512 whatever the header says. So "CID" in
 * "parentCID" counts when that line comes first. -EINVAL when none.
 */
static int
vmdk_read_cid(struct vimg_node *file, bool is_parent, uint32_t *out, struct vimg_error *err)
{
    const char *key = is_parent ? "parentCID" : "CID";
    uint8_t magic[4];
    uint64_t at = 0;
    char *area, *p;
    int ret;

    if ((ret = vimg_node_pread_padded(file, 0, magic, sizeof(magic), err)) < 0)
        return ret;
    if (vmdk_le32(magic) == VMDK4_MAGIC || vmdk_le32(magic) == VMDK3_MAGIC)
        at = VMDK_SECTOR;
    if (!(area = malloc(VMDK_CID_AREA)))
        return vimg_error_set(err, ENOMEM, "Out of memory");
    if ((ret = vimg_node_pread_padded(file, at, area, VMDK_CID_AREA, err)) == 0) {
        area[VMDK_CID_AREA - 1] = '\0';
        p = strstr(area, key);
        if (!p || !p[strlen(key)] || sscanf(p + strlen(key) + 1, "%" SCNx32, out) != 1)
            ret = -EINVAL;
    }
    free(area);
    return ret;
}

/*
 * Gives the image a new CID, as qemu-img does on the first write of each
 * open: in the 20-sector descriptor area (read as vmdk_read_cid reads it),
 * the text after the first "CID" and one more character becomes the new CID
 * and a newline, followed by everything from the first "parentCID" on. The
 * area goes back whole, but not past the file's length rounded up to a
 * sector (a 338-byte descriptor file becomes 512 bytes, as with qemu-img).
 * Without "parentCID" the write fails with EINVAL.
 */
static int
vmdk_write_cid(struct vimg_node *file, uint32_t cid, struct vimg_error *err)
{
    int64_t len = vimg_node_length(file, err);
    char *desc = NULL, *tail = NULL, *p;
    uint8_t magic[4];
    uint64_t at = 0, n;
    int ret;

    if (len < 0)
        return (int)len;
    if ((ret = vimg_node_pread_padded(file, 0, magic, sizeof(magic), err)) < 0)
        return ret;
    if (vmdk_le32(magic) == VMDK4_MAGIC || vmdk_le32(magic) == VMDK3_MAGIC)
        at = VMDK_SECTOR;
    if (!(desc = calloc(1, VMDK_CID_AREA)))
        return vimg_error_set(err, ENOMEM, "Out of memory");
    if ((ret = vimg_node_pread_padded(file, at, desc, VMDK_CID_AREA, err)) < 0)
        goto out;
    desc[VMDK_CID_AREA - 1] = '\0';
    if (!(p = strstr(desc, "parentCID"))) {
        ret = vimg_error_set(err, EINVAL, "%s", strerror(EINVAL));
        goto out;
    }
    if (!(tail = strdup(p))) {
        ret = vimg_error_set(err, ENOMEM, "Out of memory");
        goto out;
    }
    if ((p = strstr(desc, "CID")) != NULL) {
        size_t used;
        p += sizeof("CID");
        snprintf(p, VMDK_CID_AREA - (size_t)(p - desc), "%" PRIx32 "\n", cid);
        used = strlen(desc);
        snprintf(desc + used, VMDK_CID_AREA - used, "%s", tail);
    }
    n = (uint64_t)len > at ? (uint64_t)len - at : 0;
    if (n > VMDK_CID_AREA)
        n = VMDK_CID_AREA;
    if ((ret = vimg_node_pwrite(file, at, desc, n, 0, err)) == 0)
        ret = vimg_node_flush(file, err);
out:
    free(tail);
    free(desc);
    return ret;
}

static int
vmdk_open(struct vimg_node *node, struct vimg_opts *opts, unsigned flags,
          struct vimg_error *err)
{
    struct vmdk_state *s = node->state;
    uint8_t h[VMDK_SECTOR];
    struct vmdk_extent *e;
    int ret;

    (void)opts;
    pthread_mutex_init(&s->lock, NULL);
    pthread_mutex_init(&s->zlock, NULL);
    if ((ret = vimg_node_pread_padded(node->file, 0, h, sizeof(h), err)) < 0)
        goto fail;
    if (vmdk_le32(h) == VMDK4_MAGIC || vmdk_le32(h) == VMDK3_MAGIC) {
        /* The extent named by an embedded descriptor is this very file. */
        if (!(e = vmdk_add_extent(s, err))) {
            ret = -ENOMEM;
            goto fail;
        }
        e->file = node->file;
        if (!(e->type_name = strdup(""))) {
            ret = vimg_error_set(err, ENOMEM, "Out of memory");
            goto fail;
        }
        ret = vmdk_open_sparse(e, &s->desc, err);
    } else if (vmdk_is_descriptor_text(h, sizeof(h))) {
        ret = vmdk_open_descriptor(node, flags, err);
    } else {
        ret = vimg_error_set(err, EINVAL, "invalid VMDK image descriptor");
    }
    if (ret < 0)
        goto fail;
    /* qemu-img reads both CIDs its own way and refuses the image without them. */
    if ((ret = vmdk_read_cid(node->file, false, &s->desc.cid, err)) == -EINVAL ||
        (ret == 0 && (ret = vmdk_read_cid(node->file, true, &s->desc.parent_cid, err)) ==
         -EINVAL))
        ret = vimg_error_set(err, EINVAL, "Could not open '%s': Invalid argument",
                             node->file->filename);
    if (ret == 0 && s->n_extents == 0)
        ret = vimg_error_set(err, EINVAL, "Invalid VMDK image descriptor");
    if (ret < 0)
        goto fail;
    /* qemu-img calls any image with a compressed extent streamOptimized. */
    for (size_t i = 0; i < s->n_extents; i++)
        if (s->extents[i].is_compressed)
            snprintf(s->desc.create_type, sizeof(s->desc.create_type), "streamOptimized");
    for (size_t i = 0; i < s->n_extents; i++) {
        s->size += s->extents[i].n_sectors * VMDK_SECTOR;
        s->extents[i].end = s->size;
    }
    /* The parent of a vmdk image is a vmdk image: qemu-img reports the format so. */
    if (s->desc.has_parent && (!(node->backing_filename = strdup(s->desc.parent_hint)) ||
                               !(node->backing_format = strdup("vmdk")))) {
        ret = vimg_error_set(err, ENOMEM, "Out of memory");
        goto fail;
    }
    /*
     * qemu-img's get_info fails when an extent differs from the first in
     * kind (sparse or flat), compression or, for sparse ones, grain size:
     * info then has neither a cluster size nor a dirty flag.
     */
    for (size_t i = 1; i < s->n_extents; i++) {
        const struct vmdk_extent *a = &s->extents[0], *b = &s->extents[i];

        if ((a->type == VMDK_EXTENT_SPARSE) != (b->type == VMDK_EXTENT_SPARSE) ||
            a->is_compressed != b->is_compressed ||
            (a->type == VMDK_EXTENT_SPARSE && a->grain_size != b->grain_size))
            node->lacks_get_info = true;
    }
    if (s->extents[0].type == VMDK_EXTENT_SPARSE && !node->lacks_get_info)
        node->cluster_size = (uint32_t)s->extents[0].grain_size;
    /* qemu-img converts to an image whose first extent is compressed with -c implied. */
    node->needs_compressed_writes = s->extents[0].is_compressed;
    node->request_alignment = VMDK_SECTOR;
    return 0;
fail:
    vmdk_close(node);
    return ret;
}

static int64_t
vmdk_length(struct vimg_node *node, struct vimg_error *err)
{
    struct vmdk_state *s = node->state;

    (void)err;
    return (int64_t)s->size;
}

static int64_t
vmdk_allocated_size(struct vimg_node *node, struct vimg_error *err)
{
    struct vmdk_state *s = node->state;
    int64_t total = vimg_node_allocated_size(node->file, err), n;

    if (total < 0)
        return total;
    for (size_t i = 0; i < s->n_extents; i++) {
        if (!s->extents[i].is_owned)
            continue;
        if ((n = vimg_node_allocated_size(s->extents[i].file, err)) < 0)
            return n;
        total += n;
    }
    return total;
}

/* Grain lookup */

enum vmdk_grain_kind {
    VMDK_GRAIN_UNALLOCATED,
    VMDK_GRAIN_ZERO,
    VMDK_GRAIN_DATA,
};

static int
vmdk_load_gt(struct vmdk_extent *e, uint64_t gd_index, struct vimg_error *err)
{
    uint64_t bytes = (uint64_t)e->n_gtes * 4;
    uint8_t *raw;
    int ret;

    if (e->gt_index == gd_index)
        return 0;
    if (!(raw = malloc(bytes)))
        return vimg_error_set(err, ENOMEM, "Out of memory");
    e->gt_index = UINT64_MAX;
    ret = vimg_node_pread_padded(e->file, (uint64_t)e->gd[gd_index] * VMDK_SECTOR, raw,
                                 bytes, err);
    for (uint32_t i = 0; ret == 0 && i < e->n_gtes; i++)
        e->gt[i] = vmdk_le32(raw + i * 4);
    free(raw);
    if (ret == 0)
        e->gt_index = gd_index;
    return ret;
}

/*
 * The SESparse grain holding ext_offset. What qemu-img reads as an I/O
 * error is one here: a directory index past the directory, an entry whose
 * top 32 bits are not 0x10000000, a table past sector 0xffffffff, a table
 * entry of an unknown kind or with bits below an unallocated nibble.
 */
static int
vmdk_se_find_grain(struct vmdk_extent *e, uint64_t ext_offset, enum vmdk_grain_kind *kind,
                   uint64_t *sector, struct vimg_error *err)
{
    uint64_t grain = ext_offset / e->grain_size;
    uint64_t gd_index = grain / SES_N_GTES;
    uint64_t gde, gt_sector, gte, cluster;
    int ret;

    if (gd_index >= e->n_gd)
        return vimg_error_set(err, EIO, "Input/output error");
    gde = gd_index < e->n_gd_loaded ? e->gd64[gd_index] : 0;
    if (gde == 0)
        return 0;
    if ((gde & UINT64_C(0xffffffff00000000)) != SES_GDE_ALLOCATED)
        return vimg_error_set(err, EIO, "Input/output error");
    gt_sector = e->se_gt_sector + (gde & UINT32_MAX) * SES_GT_SECTORS;
    if (gt_sector > UINT32_MAX)
        return vimg_error_set(err, EIO, "Input/output error");
    if (gt_sector == 0)
        return 0;
    if (e->gt_index != gt_sector) {
        uint8_t *raw = malloc(SES_N_GTES * 8);

        if (!raw)
            return vimg_error_set(err, ENOMEM, "Out of memory");
        e->gt_index = UINT64_MAX;
        ret = vimg_node_pread_padded(e->file, gt_sector * VMDK_SECTOR, raw, SES_N_GTES * 8, err);
        for (uint32_t i = 0; ret == 0 && i < SES_N_GTES; i++)
            e->gt64[i] = vmdk_le64(raw + i * 8);
        free(raw);
        if (ret < 0)
            return ret;
        e->gt_index = gt_sector;
    }
    gte = e->gt64[grain % SES_N_GTES];
    switch (gte >> 60) {
    case 0:     /* unallocated: the parent's data */
        return gte ? vimg_error_set(err, EIO, "Input/output error") : 0;
    case 1:     /* unmapped (SCSI UNMAP) */
    case 2:     /* zero */
        *kind = VMDK_GRAIN_ZERO;
        return 0;
    case 3:
        cluster = (gte >> 48 & 0xfff) | (gte & UINT64_C(0xffffffffffff)) << 12;
        /* As in qemu-img, a grain at sector 0 reads as unallocated. */
        if ((*sector = e->se_grains_sector + cluster * SES_GRAIN_SECTORS) != 0)
            *kind = VMDK_GRAIN_DATA;
        return 0;
    default:
        return vimg_error_set(err, EIO, "Input/output error");
    }
}

/* The kind of the grain holding ext_offset (bytes in the extent) and its sector. */
static int
vmdk_find_grain(struct vmdk_extent *e, uint64_t ext_offset, enum vmdk_grain_kind *kind,
                uint64_t *sector, struct vimg_error *err)
{
    uint64_t grain = ext_offset / e->grain_size;
    uint64_t gd_index = grain / e->n_gtes;
    uint32_t gte;
    int ret;

    *kind = VMDK_GRAIN_UNALLOCATED;
    *sector = 0;
    if (e->is_sesparse)
        return vmdk_se_find_grain(e, ext_offset, kind, sector, err);
    if (gd_index >= e->n_gd || e->gd[gd_index] == 0)
        return 0;
    if ((ret = vmdk_load_gt(e, gd_index, err)) < 0)
        return ret;
    gte = e->gt[grain % e->n_gtes];
    if (gte == 0)
        return 0;
    if (gte == VMDK_GTE_ZERO && e->has_zero_grain) {
        *kind = VMDK_GRAIN_ZERO;
        return 0;
    }
    *kind = VMDK_GRAIN_DATA;
    *sector = gte;
    return 0;
}

static int
vmdk_inflate(const uint8_t *in, size_t in_len, uint8_t *out, size_t out_len,
             struct vimg_error *err)
{
    z_stream z;
    int zr;

    memset(&z, 0, sizeof(z));
    if (inflateInit(&z) != Z_OK)
        return vimg_error_set(err, ENOMEM, "Out of memory");
    z.next_in = (Bytef *)in;
    z.avail_in = (uInt)in_len;
    z.next_out = out;
    z.avail_out = (uInt)out_len;
    zr = inflate(&z, Z_FINISH);
    inflateEnd(&z);
    if (zr != Z_STREAM_END && zr != Z_OK && !(zr == Z_BUF_ERROR && z.avail_out == 0))
        return vimg_error_set(err, EIO, "Could not decompress a grain");
    memset(out + (out_len - z.avail_out), 0, z.avail_out);
    return 0;
}

/* Reads the whole compressed grain at sector into out (grain_size bytes). */
static int
vmdk_read_compressed(struct vmdk_extent *e, uint32_t sector, uint8_t *out,
                     struct vimg_error *err)
{
    uint64_t offset = (uint64_t)sector * VMDK_SECTOR, cap = e->grain_size * 2 + 4096;
    size_t skip = e->has_markers ? VMDK_MARKER_HEADER : 0;
    uint64_t in_len = cap;
    uint8_t *in;
    int ret;

    if (!(in = malloc(cap)))
        return vimg_error_set(err, ENOMEM, "Out of memory");
    if ((ret = vimg_node_pread_padded(e->file, offset, in, cap, err)) < 0)
        goto out;
    if (e->has_markers) {
        in_len = vmdk_le32(in + VMDK_MARKER_OFF_SIZE);
        if (in_len > cap - skip) {
            ret = vimg_error_set(err, EINVAL, "Compressed grain size %" PRIu64
                                 " is too large (max %" PRIu64 ")", in_len, cap - skip);
            goto out;
        }
    } else {
        in_len = cap;
    }
    ret = vmdk_inflate(in + skip, (size_t)in_len, out, (size_t)e->grain_size, err);
out:
    free(in);
    return ret;
}

static int
vmdk_read_backing(struct vimg_node *node, uint64_t offset, uint8_t *out, uint64_t bytes,
                  struct vimg_error *err)
{
    int64_t len;
    uint64_t n;

    if (!node->backing) {
        memset(out, 0, bytes);
        return 0;
    }
    if ((len = vimg_node_length(node->backing, err)) < 0)
        return (int)len;
    n = offset >= (uint64_t)len ? 0 : (uint64_t)len - offset;
    if (n > bytes)
        n = bytes;
    memset(out + n, 0, bytes - n);
    return n ? vimg_node_pread(node->backing, offset, out, n, 0, err) : 0;
}

/* Reads within one grain of a sparse extent; disk_offset is for the backing file. */
static int
vmdk_read_sparse(struct vimg_node *node, struct vmdk_extent *e, uint64_t ext_offset,
                 uint64_t disk_offset, uint8_t *out, uint64_t len, struct vimg_error *err)
{
    enum vmdk_grain_kind kind;
    uint64_t sector;
    uint8_t *grain;
    int ret;

    if ((ret = vmdk_find_grain(e, ext_offset, &kind, &sector, err)) < 0)
        return ret;
    if (kind == VMDK_GRAIN_UNALLOCATED)
        return vmdk_read_backing(node, disk_offset, out, len, err);
    if (kind == VMDK_GRAIN_ZERO) {
        memset(out, 0, len);
        return 0;
    }
    if (e->is_sesparse)
        return vmdk_se_pread(e, sector * VMDK_SECTOR + ext_offset % e->grain_size, out, len,
                             err);
    if (!e->is_compressed)
        return vimg_node_pread_padded(e->file, (uint64_t)sector * VMDK_SECTOR +
                                      ext_offset % e->grain_size, out, len, err);
    if (!(grain = malloc(e->grain_size)))
        return vimg_error_set(err, ENOMEM, "Out of memory");
    if ((ret = vmdk_read_compressed(e, (uint32_t)sector, grain, err)) == 0)
        memcpy(out, grain + ext_offset % e->grain_size, len);
    free(grain);
    return ret;
}

static struct vmdk_extent *
vmdk_find_extent(struct vmdk_state *s, uint64_t offset)
{
    for (size_t i = 0; i < s->n_extents; i++)
        if (offset < s->extents[i].end)
            return &s->extents[i];
    return NULL;
}

/* The length of the piece at offset that one extent (and grain) serves. */
static uint64_t
vmdk_piece(const struct vmdk_extent *e, uint64_t offset, uint64_t bytes)
{
    uint64_t len = e->end - offset;

    if (e->type == VMDK_EXTENT_SPARSE) {
        uint64_t ext_offset = offset - (e->end - e->n_sectors * VMDK_SECTOR);
        uint64_t in_grain = e->grain_size - ext_offset % e->grain_size;
        if (in_grain < len)
            len = in_grain;
    }
    return len < bytes ? len : bytes;
}

static int
vmdk_read_piece(struct vimg_node *node, struct vmdk_extent *e, uint64_t offset, uint8_t *out,
                uint64_t len, struct vimg_error *err)
{
    uint64_t ext_offset = offset - (e->end - e->n_sectors * VMDK_SECTOR);

    switch (e->type) {
    case VMDK_EXTENT_ZERO:
        memset(out, 0, len);
        return 0;
    case VMDK_EXTENT_FLAT:
        return vimg_node_pread_padded(e->file, e->flat_offset + ext_offset, out, len, err);
    case VMDK_EXTENT_SPARSE:
        break;
    }
    return vmdk_read_sparse(node, e, ext_offset, offset, out, len, err);
}

static int
vmdk_read(struct vimg_node *node, uint64_t offset, uint8_t *out, uint64_t bytes,
          struct vimg_error *err)
{
    struct vmdk_state *s = node->state;
    int ret = 0;

    pthread_mutex_lock(&s->lock);
    while (bytes && ret == 0) {
        struct vmdk_extent *e = vmdk_find_extent(s, offset);
        uint64_t len;

        if (!e) {
            memset(out, 0, bytes);
            break;
        }
        len = vmdk_piece(e, offset, bytes);
        ret = vmdk_read_piece(node, e, offset, out, len, err);
        offset += len;
        out += len;
        bytes -= len;
    }
    pthread_mutex_unlock(&s->lock);
    return ret;
}

/* Block status: one piece's flags, then merged with the following pieces. */
static int
vmdk_piece_status(struct vmdk_extent *e, uint64_t offset, struct vimg_block_status *bs,
                  struct vimg_error *err)
{
    uint64_t ext_offset = offset - (e->end - e->n_sectors * VMDK_SECTOR);
    enum vmdk_grain_kind kind;
    uint64_t sector;
    int ret;

    bs->flags = 0;
    bs->offset = 0;
    bs->file = e->file;
    if (e->type == VMDK_EXTENT_ZERO) {
        bs->flags = VIMG_BS_ZERO | VIMG_BS_ALLOCATED;
        return 0;
    }
    if ((ret = vmdk_find_grain(e, ext_offset, &kind, &sector, err)) < 0)
        return ret;
    if (kind == VMDK_GRAIN_ZERO)
        bs->flags = VIMG_BS_ZERO | VIMG_BS_ALLOCATED;
    else if (kind == VMDK_GRAIN_DATA && e->is_compressed)
        bs->flags = VIMG_BS_DATA | VIMG_BS_ALLOCATED | VIMG_BS_COMPRESSED;
    else if (kind == VMDK_GRAIN_DATA) {
        bs->flags = VIMG_BS_DATA | VIMG_BS_ALLOCATED | VIMG_BS_OFFSET_VALID;
        bs->offset = (uint64_t)sector * VMDK_SECTOR + ext_offset % e->grain_size;
    }
    return 0;
}

/*
 * The length at offset that a SESparse extent answers as one: a whole run of
 * unallocated directory entries (16 MiB each) at once, else one grain.
 */
static uint64_t
vmdk_se_piece(const struct vmdk_extent *e, uint64_t offset, uint64_t bytes)
{
    uint64_t ext_offset = offset - (e->end - e->n_sectors * VMDK_SECTOR);
    uint64_t per_gd = (uint64_t)SES_N_GTES * e->grain_size;
    uint64_t t = ext_offset / per_gd, stop = t, len;

    if (t >= e->n_gd)
        return vmdk_piece(e, offset, bytes);
    if (t >= e->n_gd_loaded)
        stop = e->n_gd;
    else
        while (stop < e->n_gd_loaded && e->gd64[stop] == 0)
            if (++stop == e->n_gd_loaded)
                stop = e->n_gd;
    if (stop == t)
        return vmdk_piece(e, offset, bytes);
    len = stop > UINT64_MAX / per_gd ? UINT64_MAX : stop * per_gd - ext_offset;
    if (len > e->end - offset)
        len = e->end - offset;
    return len < bytes ? len : bytes;
}

/* A flat extent is data, zeros where its file has a hole, as qemu-img maps it. */
static int
vmdk_flat_status(struct vmdk_extent *e, uint64_t offset, uint64_t len,
                 struct vimg_block_status *bs, uint64_t *done, struct vimg_error *err)
{
    uint64_t ext_offset = offset - (e->end - e->n_sectors * VMDK_SECTOR);
    struct vimg_block_status below;
    int ret;

    if ((ret = vimg_node_block_status(e->file, e->flat_offset + ext_offset, len, &below,
                                      err)) < 0)
        return ret;
    bs->flags = VIMG_BS_DATA | VIMG_BS_ALLOCATED | VIMG_BS_OFFSET_VALID;
    if ((below.flags & VIMG_BS_ZERO) && !(below.flags & VIMG_BS_DATA))
        bs->flags |= VIMG_BS_ZERO;
    bs->offset = e->flat_offset + ext_offset;
    bs->file = e->file;
    *done = below.bytes < len ? below.bytes : len;
    return 0;
}

/*
 * Before an unallocated range is read from the parent: as qemu-img, the
 * parent must be a vmdk image whose CID, read from its file now, is the
 * parentCID this image records; otherwise the read fails with EINVAL. A
 * match is remembered; a mismatch is looked up again on the next read.
 */
static int
vmdk_check_backing(struct vimg_node *node, struct vimg_error *err)
{
    struct vmdk_state *s = node->state;
    struct vimg_node *parent = node->backing;
    uint32_t cid;

    if (__atomic_load_n(&s->is_parent_checked, __ATOMIC_ACQUIRE))
        return 0;
    if (parent->drv != node->drv || !parent->file ||
        vmdk_read_cid(parent->file, false, &cid, err) < 0 || cid != s->desc.parent_cid)
        return vimg_error_set(err, EINVAL, "Invalid argument");
    __atomic_store_n(&s->is_parent_checked, true, __ATOMIC_RELEASE);
    return 0;
}

static int
vmdk_block_status(struct vimg_node *node, uint64_t offset, uint64_t bytes,
                  struct vimg_block_status *bs, struct vimg_error *err)
{
    struct vmdk_state *s = node->state;
    struct vmdk_extent *e;
    uint64_t done = 0;
    int ret = 0;

    pthread_mutex_lock(&s->lock);
    while (done < bytes && (e = vmdk_find_extent(s, offset + done))) {
        struct vimg_block_status next;
        uint64_t len = e->is_sesparse ? vmdk_se_piece(e, offset + done, bytes - done)
                                      : vmdk_piece(e, offset + done, bytes - done);

        if (e->type == VMDK_EXTENT_FLAT) {
            if (done == 0)
                ret = vmdk_flat_status(e, offset, len, bs, &done, err);
            break;
        }
        if ((ret = vmdk_piece_status(e, offset + done, done ? &next : bs, err)) < 0) {
            /* As qemu-img, which asks grain by grain: what came before is answered. */
            if (done) {
                ret = 0;
                memset(err, 0, sizeof(*err));
            }
            break;
        }
        if (done && (next.flags != bs->flags || next.file != bs->file ||
                     ((bs->flags & VIMG_BS_OFFSET_VALID) && next.offset != bs->offset + done)))
            break;
        done += len;
    }
    pthread_mutex_unlock(&s->lock);
    if (ret < 0)
        return ret;
    if (done == 0) {
        bs->flags = VIMG_BS_ZERO;
        done = bytes;
    }
    bs->bytes = done;
    return 0;
}

/* Writing */

static int
vmdk_write_gte(struct vmdk_extent *e, const uint32_t *dir, uint64_t grain, uint32_t value,
               struct vimg_error *err)
{
    uint64_t gd_index = grain / e->n_gtes;
    uint8_t b[4];

    vmdk_put_le32(b, value);
    return vimg_node_pwrite(e->file, (uint64_t)dir[gd_index] * VMDK_SECTOR +
                            grain % e->n_gtes * 4, b, 4, 0, err);
}

/* Allocates an empty grain table for gd_index in dir, recording it at dir_sector. */
static int
vmdk_alloc_gt(struct vmdk_extent *e, uint32_t *dir, uint64_t dir_sector, uint64_t gd_index,
              struct vimg_error *err)
{
    uint64_t bytes = (uint64_t)e->n_gtes * 4;
    uint64_t sectors = (bytes + VMDK_SECTOR - 1) / VMDK_SECTOR;
    uint8_t *zero, b[4];
    int ret;

    if (e->next_sector + sectors > UINT32_MAX)
        return vimg_error_set(err, EFBIG, "The extent file is full");
    if (!(zero = calloc(1, sectors * VMDK_SECTOR)))
        return vimg_error_set(err, ENOMEM, "Out of memory");
    ret = vimg_node_pwrite(e->file, e->next_sector * VMDK_SECTOR, zero, sectors * VMDK_SECTOR,
                           0, err);
    free(zero);
    if (ret < 0)
        return ret;
    dir[gd_index] = (uint32_t)e->next_sector;
    e->next_sector += sectors;
    vmdk_put_le32(b, dir[gd_index]);
    return vimg_node_pwrite(e->file, dir_sector * VMDK_SECTOR + gd_index * 4, b, 4, 0, err);
}

/*
 * Compresses in to out (zlib format, as qemu-img writes grains). With
 * libdeflate the output is smaller than zlib's at the same level and takes
 * less than half the CPU time; its compressors are kept for reuse.
 */
static int
vmdk_deflate(struct vmdk_state *s, const uint8_t *in, size_t in_len, uint8_t *out,
             size_t *out_len, struct vimg_error *err)
{
#ifdef VIMG_HAVE_LIBDEFLATE
    struct libdeflate_compressor *c = NULL;
    size_t n;

    pthread_mutex_lock(&s->zlock);
    if (s->n_compressors)
        c = s->compressors[--s->n_compressors];
    pthread_mutex_unlock(&s->zlock);
    if (!c && !(c = libdeflate_alloc_compressor(VMDK_DEFLATE_LEVEL)))
        return vimg_error_set(err, ENOMEM, "Out of memory");
    n = libdeflate_zlib_compress(c, in, in_len, out, *out_len);
    pthread_mutex_lock(&s->zlock);
    if (s->n_compressors < VMDK_MAX_COMPRESSORS) {
        s->compressors[s->n_compressors++] = c;
        c = NULL;
    }
    pthread_mutex_unlock(&s->zlock);
    libdeflate_free_compressor(c);
    if (n == 0)
        return vimg_error_set(err, EIO, "Could not compress a grain");
    *out_len = n;
    return 0;
#else
    uLongf n = (uLongf)*out_len;

    (void)s;
    if (compress2(out, &n, in, (uLong)in_len, VMDK_DEFLATE_LEVEL) != Z_OK)
        return vimg_error_set(err, EIO, "Could not compress a grain");
    *out_len = n;
    return 0;
#endif
}

/* A compressed grain as it goes into the file: marker (if any) and data, whole sectors. */
struct vmdk_packed {
    uint8_t *buf;
    size_t len;
};

/* Packs grain (grain_size bytes) for compressed extent e; may run without s->lock. */
static int
vmdk_pack_grain(struct vmdk_state *s, const struct vmdk_extent *e, uint64_t grain_index,
                const uint8_t *grain, struct vmdk_packed *out, struct vimg_error *err)
{
    size_t head = e->has_markers ? VMDK_MARKER_HEADER : 0;
    uint64_t cap = compressBound((uLong)e->grain_size) + head + VMDK_SECTOR;
    size_t clen = (size_t)cap - head - VMDK_SECTOR;
    int ret;

    if (!(out->buf = calloc(1, cap)))
        return vimg_error_set(err, ENOMEM, "Out of memory");
    if ((ret = vmdk_deflate(s, grain, e->grain_size, out->buf + head, &clen, err)) < 0) {
        free(out->buf);
        out->buf = NULL;
        return ret;
    }
    if (e->has_markers) {
        vmdk_put_le64(out->buf + VMDK_MARKER_OFF_LBA,
                      grain_index * (e->grain_size / VMDK_SECTOR));
        vmdk_put_le32(out->buf + VMDK_MARKER_OFF_SIZE, (uint32_t)clen);
    }
    out->len = (head + clen + VMDK_SECTOR - 1) / VMDK_SECTOR * VMDK_SECTOR;
    return 0;
}

/* Appends len bytes (whole sectors) at the allocation point; *sector receives where. */
static int
vmdk_append(struct vmdk_extent *e, const uint8_t *data, size_t len, uint32_t *sector,
            struct vimg_error *err)
{
    int ret;

    if (e->next_sector + len / VMDK_SECTOR > UINT32_MAX)
        return vimg_error_set(err, EFBIG, "The extent file is full");
    if ((ret = vimg_node_pwrite(e->file, e->next_sector * VMDK_SECTOR, data, len, 0, err)) < 0)
        return ret;
    *sector = (uint32_t)e->next_sector;
    e->next_sector += len / VMDK_SECTOR;
    return 0;
}

/* Appends grain (grain_size bytes), compressed when the extent is. */
static int
vmdk_append_grain(struct vmdk_state *s, struct vmdk_extent *e, uint64_t grain_index,
                  const uint8_t *grain, uint32_t *sector, struct vimg_error *err)
{
    struct vmdk_packed packed = { 0 };
    int ret;

    if (!e->is_compressed)
        return vmdk_append(e, grain, e->grain_size, sector, err);
    if ((ret = vmdk_pack_grain(s, e, grain_index, grain, &packed, err)) < 0)
        return ret;
    ret = vmdk_append(e, packed.buf, packed.len, sector, err);
    free(packed.buf);
    return ret;
}

static int vmdk_set_gte(struct vmdk_extent *e, uint64_t grain_index, uint32_t sector,
                        struct vimg_error *err);

/*
 * Writes within one grain of a sparse extent; pre, when not NULL, is the
 * whole grain already packed. Called with s->lock held.
 */
static int
vmdk_write_sparse(struct vimg_node *node, struct vmdk_extent *e, uint64_t ext_offset,
                  uint64_t disk_offset, const uint8_t *in, uint64_t len,
                  const struct vmdk_packed *pre, struct vimg_error *err)
{
    uint64_t grain_index = ext_offset / e->grain_size;
    uint64_t in_grain = ext_offset % e->grain_size;
    enum vmdk_grain_kind kind;
    uint64_t found;
    uint32_t sector;
    uint8_t *grain;
    int ret;

    if (e->is_sesparse)
        return vimg_error_set(err, EACCES, "No write support for seSparse images available");
    if ((ret = vmdk_find_grain(e, ext_offset, &kind, &found, err)) < 0)
        return ret;
    if (kind == VMDK_GRAIN_DATA && !e->is_compressed)
        return vimg_node_pwrite(e->file, found * VMDK_SECTOR + in_grain, in, len, 0, err);
    if (kind == VMDK_GRAIN_DATA) {
        /* qemu-img reports this line itself, then fails with EIO. */
        vimg_warn("Could not write to allocated cluster for streamOptimized");
        return vimg_error_set(err, EIO, "Could not write to allocated cluster for "
                              "streamOptimized");
    }
    /* qemu-img allocates no grain, zeroed or not, under a parent whose CID is wrong. */
    if (node->backing && (ret = vmdk_check_backing(node, err)) < 0)
        return ret;
    if (pre) {
        if ((ret = vmdk_append(e, pre->buf, pre->len, &sector, err)) < 0)
            return ret;
        return vmdk_set_gte(e, grain_index, sector, err);
    }
    if (!(grain = malloc(e->grain_size)))
        return vimg_error_set(err, ENOMEM, "Out of memory");
    ret = 0;
    if (len < e->grain_size) {
        if (kind == VMDK_GRAIN_ZERO)
            memset(grain, 0, e->grain_size);
        else
            ret = vmdk_read_backing(node, disk_offset - in_grain, grain, e->grain_size, err);
    }
    if (ret == 0) {
        memcpy(grain + in_grain, in, len);
        ret = vmdk_append_grain(node->state, e, grain_index, grain, &sector, err);
    }
    free(grain);
    if (ret < 0)
        return ret;
    return vmdk_set_gte(e, grain_index, sector, err);
}

/* Points grain_index at sector in the grain table and its redundant copy. */
static int
vmdk_set_gte(struct vmdk_extent *e, uint64_t grain_index, uint32_t sector,
             struct vimg_error *err)
{
    uint64_t gd_index = grain_index / e->n_gtes;
    int ret;

    /* The grain reaches the file before the table entry that points at it. */
    if (e->gd[gd_index] == 0 && (ret = vmdk_alloc_gt(e, e->gd, 0, gd_index, err)) < 0)
        return ret;
    if ((ret = vmdk_load_gt(e, gd_index, err)) < 0 ||
        (ret = vmdk_write_gte(e, e->gd, grain_index, sector, err)) < 0)
        return ret;
    e->gt[grain_index % e->n_gtes] = sector;
    if (e->rgd && e->rgd[gd_index])
        ret = vmdk_write_gte(e, e->rgd, grain_index, sector, err);
    return ret;
}

/*
 * Whole grains of a compressed extent are compressed before taking s->lock,
 * so that the callers' threads (convert's workers) compress in parallel.
 */
static int
vmdk_write_piece(struct vimg_node *node, struct vmdk_extent *e, uint64_t offset,
                 const uint8_t *in, uint64_t len, struct vimg_error *err)
{
    struct vmdk_state *s = node->state;
    uint64_t ext_offset = offset - (e->end - e->n_sectors * VMDK_SECTOR);
    struct vmdk_packed pre = { 0 };
    int ret = 0;

    if (e->type == VMDK_EXTENT_FLAT)
        return vimg_node_pwrite(e->file, e->flat_offset + ext_offset, in, len, 0, err);
    if (e->type != VMDK_EXTENT_SPARSE)
        return 0;
    if (e->is_compressed && ext_offset % e->grain_size == 0 && len == e->grain_size &&
        (ret = vmdk_pack_grain(s, e, ext_offset / e->grain_size, in, &pre, err)) < 0)
        return ret;
    pthread_mutex_lock(&s->lock);
    ret = vmdk_write_sparse(node, e, ext_offset, offset, in, len, pre.buf ? &pre : NULL, err);
    pthread_mutex_unlock(&s->lock);
    free(pre.buf);
    return ret;
}

static int
vmdk_write(struct vimg_node *node, uint64_t offset, uint64_t bytes, const struct iovec *iov,
           int n_iov, unsigned flags, struct vimg_error *err)
{
    struct vmdk_state *s = node->state;
    const uint8_t *in;
    int ret = 0;

    (void)flags;
    if (n_iov != 1)
        return vimg_error_set(err, EINVAL, "vmdk writes need one buffer");
    in = iov[0].iov_base;
    while (bytes && ret == 0) {
        struct vmdk_extent *e = vmdk_find_extent(s, offset);
        uint64_t len;

        if (!e)
            return vimg_error_set(err, EIO, "Write beyond the end of the image");
        len = vmdk_piece(e, offset, bytes);
        ret = vmdk_write_piece(node, e, offset, in, len, err);
        offset += len;
        in += len;
        bytes -= len;
        /* As qemu-img: after the first piece written in this open, a new CID. */
        if (ret == 0 && !atomic_load(&s->is_cid_updated)) {
            uint32_t cid;
            pthread_mutex_lock(&s->lock);
            if (!atomic_load(&s->is_cid_updated)) {
                if (getrandom(&cid, sizeof(cid), 0) != sizeof(cid))
                    ret = vimg_error_set_errno(err, errno, "Could not generate a CID");
                else if ((ret = vmdk_write_cid(node->file, cid, err)) == 0)
                    atomic_store(&s->is_cid_updated, true);
            }
            pthread_mutex_unlock(&s->lock);
        }
    }
    return ret;
}

/* As qemu-img: compressed extents take it compressed, others as a plain write. */
static int
vmdk_pwrite_compressed(struct vimg_node *node, uint64_t offset, const void *buf, uint64_t bytes,
                       struct vimg_error *err)
{
    struct iovec iov = { .iov_base = (void *)buf, .iov_len = bytes };

    return vmdk_write(node, offset, bytes, &iov, 1, 0, err);
}

static int
vmdk_flush(struct vimg_node *node, struct vimg_error *err)
{
    struct vmdk_state *s = node->state;
    int ret;

    for (size_t i = 0; i < s->n_extents; i++)
        if (s->extents[i].is_owned && (ret = vimg_node_flush(s->extents[i].file, err)) < 0)
            return ret;
    return vimg_node_flush(node->file, err);
}

/* Check */

/*
 * The first grain of a sparse extent that points past the end of its file,
 * as qemu-img reports it; grain tables never allocated are skipped whole.
 */
static int
vmdk_check_extent(struct vmdk_extent *e, uint64_t start, struct vimg_error *err)
{
    int64_t file_len = vimg_node_length(e->file, err);
    uint64_t n_grains = (e->n_sectors * VMDK_SECTOR + e->grain_size - 1) / e->grain_size;
    int ret;

    if (file_len < 0)
        return (int)file_len;
    for (uint64_t t = 0; t < e->n_gd && t * e->n_gtes < n_grains; t++) {
        /* Runs of unallocated tables (all of a huge sparse directory) go fast. */
        if (t % 4096 == 0 && t + 4096 <= e->n_gd && vimg_buffer_is_zero(e->gd + t, 4096 * 4)) {
            t += 4095;
            continue;
        }
        if (e->gd[t] == 0)
            continue;
        if ((ret = vmdk_load_gt(e, t, err)) < 0)
            return ret;
        for (uint64_t k = 0; k < e->n_gtes && t * e->n_gtes + k < n_grains; k++) {
            uint32_t gte = e->gt[k];
            if (gte == 0 || (gte == VMDK_GTE_ZERO && e->has_zero_grain) ||
                (uint64_t)gte * VMDK_SECTOR < (uint64_t)file_len)
                continue;
            /* The tools print "ERROR..." lines as they are, as qemu-img does. */
            vimg_warn("ERROR: cluster offset for sector %" PRIu64 " points after EOF",
                      (start + (t * e->n_gtes + k) * e->grain_size) / VMDK_SECTOR);
            return vimg_error_set(err, EINVAL, "Invalid argument");
        }
    }
    return 0;
}

/*
 * qemu-img walks a SESparse extent grain by grain: the first grain whose
 * lookup fails ends the check with its own line and EPERM (its internal
 * error code, -1), the first grain past the end of the file as above.
 * Unallocated directory entries are skipped whole.
 */
static int
vmdk_se_check_extent(struct vmdk_extent *e, uint64_t start, struct vimg_error *err)
{
    int64_t file_len = vimg_node_length(e->file, err);
    uint64_t n_grains = (e->n_sectors + SES_GRAIN_SECTORS - 1) / SES_GRAIN_SECTORS;

    if (file_len < 0)
        return (int)file_len;
    for (uint64_t g = 0; g < n_grains; g++) {
        uint64_t sector, t = g / SES_N_GTES;
        enum vmdk_grain_kind kind;
        uint64_t at;
        int ret;

        /* Directory entries never read (past the file) are 0: jump to the directory's end. */
        if (t >= e->n_gd_loaded && t < e->n_gd) {
            if (e->n_gd >= (n_grains + SES_N_GTES - 1) / SES_N_GTES)
                break;
            g = e->n_gd * SES_N_GTES;
        } else if (t < e->n_gd && g % SES_N_GTES == 0 && e->gd64[t] == 0) {
            g += SES_N_GTES - 1;
            continue;
        }
        sector = (start + g * e->grain_size) / VMDK_SECTOR;
        if ((ret = vmdk_find_grain(e, g * e->grain_size, &kind, &at, err)) < 0) {
            if (ret != -EIO)
                return ret;
            vimg_warn("ERROR: could not get cluster_offset for sector %" PRIu64, sector);
            return vimg_error_set(err, EPERM, "Operation not permitted");
        }
        if (kind == VMDK_GRAIN_DATA && at * VMDK_SECTOR >= (uint64_t)file_len) {
            vimg_warn("ERROR: cluster offset for sector %" PRIu64 " points after EOF", sector);
            return vimg_error_set(err, EINVAL, "Invalid argument");
        }
    }
    return 0;
}

static int
vmdk_check(struct vimg_node *node, int fix, struct vimg_check_result *result,
           struct vimg_error *err)
{
    struct vmdk_state *s = node->state;
    int ret = 0;

    (void)fix;
    (void)result;
    pthread_mutex_lock(&s->lock);
    for (size_t i = 0; i < s->n_extents && ret == 0; i++) {
        struct vmdk_extent *e = &s->extents[i];
        if (e->is_sesparse)
            ret = vmdk_se_check_extent(e, e->end - e->n_sectors * VMDK_SECTOR, err);
        else if (e->type == VMDK_EXTENT_SPARSE)
            ret = vmdk_check_extent(e, e->end - e->n_sectors * VMDK_SECTOR, err);
    }
    pthread_mutex_unlock(&s->lock);
    return ret;
}

/* Info */

static int
vmdk_info(struct vimg_node *node, json_t **out, struct vimg_error *err)
{
    struct vmdk_state *s = node->state;
    json_t *data = json_object(), *list = json_array(), *spec = json_object();

    (void)err;
    json_object_set_new(data, "cid", json_integer(s->desc.cid));
    json_object_set_new(data, "parent-cid", json_integer(s->desc.parent_cid));
    json_object_set_new(data, "create-type", json_string(s->desc.create_type));
    for (size_t i = 0; i < s->n_extents; i++) {
        const struct vmdk_extent *e = &s->extents[i];
        json_t *x = json_object();

        if (e->is_compressed)
            json_object_set_new(x, "compressed", json_true());
        json_object_set_new(x, "virtual-size", json_integer((json_int_t)(e->n_sectors *
                                                                          VMDK_SECTOR)));
        json_object_set_new(x, "filename", json_string(e->file ? e->file->filename
                                                               : node->filename));
        if (e->type == VMDK_EXTENT_SPARSE)
            json_object_set_new(x, "cluster-size", json_integer((json_int_t)e->grain_size));
        json_object_set_new(x, "format", json_string(e->type_name));
        json_array_append_new(list, x);
    }
    json_object_set_new(data, "extents", list);
    json_object_set_new(spec, "type", json_string("vmdk"));
    json_object_set_new(spec, "data", data);
    *out = spec;
    return 0;
}

/* Creation */

static const struct vimg_opt_desc vmdk_create_opts[] = {
    { "size", VIMG_OPT_SIZE, "Virtual disk size", NULL },
    { "adapter_type", VIMG_OPT_STRING, "Virtual adapter type, can be one of ide (default), "
      "lsilogic, buslogic or legacyESX", NULL },
    { "backing_file", VIMG_OPT_STRING, "File name of a base image", NULL },
    { "backing_fmt", VIMG_OPT_STRING, "Must be 'vmdk' if present", NULL },
    { "compat6", VIMG_OPT_BOOL, "VMDK version 6 image", "off" },
    { "hwversion", VIMG_OPT_STRING, "VMDK hardware version", "undefined" },
    { "toolsversion", VIMG_OPT_STRING, "VMware guest tools version", NULL },
    { "subformat", VIMG_OPT_STRING, "VMDK flat extent format, can be one of {monolithicSparse "
      "(default) | monolithicFlat | twoGbMaxExtentSparse | twoGbMaxExtentFlat | "
      "streamOptimized} ", NULL },
    { "zeroed_grain", VIMG_OPT_BOOL, "Enable efficient zero writes using the zeroed-grain "
      "GTE feature", NULL },
    { NULL, 0, NULL, NULL },
};

struct vmdk_create_params {
    uint64_t size;
    const char *adapter;
    const char *hwversion;
    const char *toolsversion;
    const char *subformat;
    const char *backing;
    bool is_split, is_flat, is_stream, has_zero_grain;
    uint32_t parent_cid;
};

static int
vmdk_parse_create(struct vimg_opts *opts, struct vmdk_create_params *p, struct vimg_error *err)
{
    const char *fmt;
    bool compat6, zg;
    int ret;

    memset(p, 0, sizeof(*p));
    if ((ret = vimg_opts_get_size(opts, "size", 0, &p->size, err)) < 0 ||
        (ret = vimg_opts_get_bool(opts, "compat6", false, &compat6, err)) < 0 ||
        (ret = vimg_opts_get_bool(opts, "zeroed_grain", false, &zg, err)) < 0)
        return ret;
    p->has_zero_grain = zg;
    p->adapter = vimg_opts_get(opts, "adapter_type");
    p->hwversion = vimg_opts_get(opts, "hwversion");
    p->toolsversion = vimg_opts_get(opts, "toolsversion");
    p->subformat = vimg_opts_get(opts, "subformat");
    p->backing = vimg_opts_get(opts, "backing_file");
    fmt = vimg_opts_get(opts, "backing_fmt");
    if (!p->adapter)
        p->adapter = "ide";
    if (strcmp(p->adapter, "ide") && strcmp(p->adapter, "lsilogic") &&
        strcmp(p->adapter, "buslogic") && strcmp(p->adapter, "legacyESX"))
        return vimg_error_set(err, EINVAL, "invalid parameter value: %s", p->adapter);
    if (p->hwversion && strcmp(p->hwversion, "undefined") == 0)
        p->hwversion = NULL;
    if (compat6 && p->hwversion)
        return vimg_error_set(err, EINVAL, "compat6 cannot be enabled with hwversion set");
    if (!p->hwversion)
        p->hwversion = compat6 ? "6" : "4";
    if (!p->toolsversion)
        p->toolsversion = "2147483647";
    if (!p->subformat)
        p->subformat = "monolithicSparse";
    if (strcmp(p->subformat, "monolithicSparse") == 0) {
    } else if (strcmp(p->subformat, "monolithicFlat") == 0) {
        p->is_flat = true;
    } else if (strcmp(p->subformat, "twoGbMaxExtentSparse") == 0) {
        p->is_split = true;
    } else if (strcmp(p->subformat, "twoGbMaxExtentFlat") == 0) {
        p->is_split = p->is_flat = true;
    } else if (strcmp(p->subformat, "streamOptimized") == 0) {
        p->is_stream = true;
    } else {
        return vimg_error_set(err, EINVAL, "invalid parameter value: %s", p->subformat);
    }
    if (fmt && strcmp(fmt, "vmdk") != 0)
        return vimg_error_set(err, EINVAL, "Backing format must be 'vmdk'");
    return 0;
}

static int
vmdk_new_file(const char *path, uint64_t size, struct vimg_node **out, struct vimg_error *err)
{
    struct vimg_opts *o = vimg_opts_new();
    int ret;

    if (!o)
        return vimg_error_set(err, ENOMEM, "Out of memory");
    ret = vimg_opts_set(o, "size", "0", err);
    if (ret == 0)
        ret = vimg_create_file(path, o, err);
    vimg_opts_free(o);
    if (ret < 0)
        return ret;
    if ((ret = vimg_open(out, path, NULL, NULL, VIMG_OPEN_RDWR | VIMG_OPEN_PROTOCOL, err)) < 0)
        return ret;
    if ((ret = vimg_node_truncate(*out, size, false, NULL, err)) < 0)
        vimg_close(*out);
    return ret;
}

struct vmdk_layout {
    uint64_t n_gts, gd_sectors, gt_sectors, rgd, gd, overhead;
};

static void
vmdk_plan_sparse(uint64_t sectors, uint64_t desc_sectors, struct vmdk_layout *l)
{
    uint64_t grains = (sectors + VMDK_CREATE_GRAIN - 1) / VMDK_CREATE_GRAIN;

    l->n_gts = (grains + VMDK_CREATE_N_GTES - 1) / VMDK_CREATE_N_GTES;
    l->gd_sectors = (l->n_gts * 4 + VMDK_SECTOR - 1) / VMDK_SECTOR;
    l->gt_sectors = VMDK_CREATE_N_GTES * 4 / VMDK_SECTOR;
    l->rgd = 1 + desc_sectors;
    l->gd = l->rgd + l->gd_sectors + l->n_gts * l->gt_sectors;
    l->overhead = l->gd + l->gd_sectors + l->n_gts * l->gt_sectors;
    l->overhead = (l->overhead + VMDK_CREATE_GRAIN - 1) / VMDK_CREATE_GRAIN * VMDK_CREATE_GRAIN;
}

static void
vmdk_encode_header(const struct vmdk_create_params *p, uint64_t sectors, uint64_t desc_sectors,
                   const struct vmdk_layout *l, uint8_t *h)
{
    uint32_t flags = VMDK4_FLAG_NL_TEST | VMDK4_FLAG_RGD;

    if (p->has_zero_grain)
        flags |= VMDK4_FLAG_ZERO_GRAIN;
    if (p->is_stream)
        flags |= VMDK4_FLAG_COMPRESS | VMDK4_FLAG_MARKER;
    memset(h, 0, VMDK_SECTOR);
    vmdk_put_le32(h + VMDK4_OFF_MAGIC, VMDK4_MAGIC);
    vmdk_put_le32(h + VMDK4_OFF_VERSION, p->is_stream ? 3 : 1);
    vmdk_put_le32(h + VMDK4_OFF_FLAGS, flags);
    vmdk_put_le64(h + VMDK4_OFF_CAPACITY, sectors);
    vmdk_put_le64(h + VMDK4_OFF_GRAIN, VMDK_CREATE_GRAIN);
    vmdk_put_le64(h + VMDK4_OFF_DESC_OFFSET, 1);
    vmdk_put_le64(h + VMDK4_OFF_DESC_SIZE, desc_sectors);
    vmdk_put_le32(h + VMDK4_OFF_N_GTES, VMDK_CREATE_N_GTES);
    vmdk_put_le64(h + VMDK4_OFF_RGD_OFFSET, l->rgd);
    vmdk_put_le64(h + VMDK4_OFF_GD_OFFSET, l->gd);
    vmdk_put_le64(h + VMDK4_OFF_OVERHEAD, l->overhead);
    memcpy(h + VMDK4_OFF_NL_TEST, "\n \r\n", 4);
    vmdk_put_le16(h + VMDK4_OFF_COMPRESS, p->is_stream ? VMDK4_COMPRESS_DEFLATE : 0);
}

static void
vmdk_encode_dir(uint8_t *buf, const struct vmdk_layout *l, uint64_t dir)
{
    for (uint64_t i = 0; i < l->n_gts; i++)
        vmdk_put_le32(buf + dir * VMDK_SECTOR + i * 4,
                      (uint32_t)(dir + l->gd_sectors + i * l->gt_sectors));
}

/* A new sparse extent file of sectors, with desc embedded when not NULL. */
static int
vmdk_create_sparse(const char *path, const struct vmdk_create_params *p, uint64_t sectors,
                   const char *desc, struct vimg_error *err)
{
    uint64_t desc_sectors = VMDK_CREATE_DESC_SECTORS;
    struct vmdk_layout l;
    struct vimg_node *file;
    uint8_t *buf;
    int ret;

    vmdk_plan_sparse(sectors, desc_sectors, &l);
    if (l.overhead > UINT32_MAX / 2)
        return vimg_error_set(err, EFBIG, "The image size is too large for file format 'vmdk'");
    if (!(buf = calloc(1, l.overhead * VMDK_SECTOR)))
        return vimg_error_set(err, ENOMEM, "Out of memory");
    vmdk_encode_header(p, sectors, desc_sectors, &l, buf);
    if (desc)
        memcpy(buf + VMDK_SECTOR, desc, strlen(desc));
    vmdk_encode_dir(buf, &l, l.rgd);
    vmdk_encode_dir(buf, &l, l.gd);
    if ((ret = vmdk_new_file(path, l.overhead * VMDK_SECTOR, &file, err)) == 0) {
        ret = vimg_node_pwrite(file, 0, buf, l.overhead * VMDK_SECTOR, 0, err);
        if (ret == 0)
            ret = vimg_node_flush(file, err);
        vimg_close(file);
    }
    free(buf);
    return ret;
}

static char *
vmdk_extent_name(const char *base, const struct vmdk_create_params *p, unsigned index)
{
    size_t n = strlen(base);
    char *out;

    if (n > 5 && strcmp(base + n - 5, ".vmdk") == 0)
        n -= 5;
    if (!p->is_split) {
        if (asprintf(&out, "%.*s-flat.vmdk", (int)n, base) < 0)
            return NULL;
    } else if (asprintf(&out, "%.*s-%c%03u.vmdk", (int)n, base, p->is_flat ? 'f' : 's',
                        index) < 0) {
        return NULL;
    }
    return out;
}

static char *
vmdk_make_desc(const struct vmdk_create_params *p, uint32_t cid, const char *extents)
{
    uint64_t sectors = p->size / VMDK_SECTOR;
    int heads = strcmp(p->adapter, "ide") == 0 ? 16 : 255;
    uint64_t cyl = sectors / (uint64_t)(heads * 63);
    char parent[600] = "";
    char *out;

    if (p->backing)
        snprintf(parent, sizeof(parent), "parentFileNameHint=\"%s\"", p->backing);
    if (asprintf(&out, "# Disk DescriptorFile\nversion=1\nCID=%" PRIx32 "\nparentCID=%"
                 PRIx32 "\ncreateType=\"%s\"\n%s\n# Extent description\n%s\n"
                 "# The Disk Data Base\n#DDB\n\nddb.virtualHWVersion = \"%s\"\n"
                 "ddb.geometry.cylinders = \"%" PRIu64 "\"\nddb.geometry.heads = \"%d\"\n"
                 "ddb.geometry.sectors = \"63\"\nddb.adapterType = \"%s\"\n"
                 "ddb.toolsVersion = \"%s\"\n", cid, p->parent_cid, p->subformat, parent,
                 extents, p->hwversion, cyl, heads, p->adapter, p->toolsversion) < 0)
        return NULL;
    return out;
}

static int
vmdk_add_extent_line(char **lines, const struct vmdk_create_params *p, uint64_t sectors,
                     const char *name, struct vimg_error *err)
{
    const char *slash = strrchr(name, '/');
    char *n;

    if (asprintf(&n, "%sRW %" PRIu64 " %s \"%s\"%s\n", *lines ? *lines : "", sectors,
                 p->is_flat ? "FLAT" : "SPARSE", slash ? slash + 1 : name,
                 p->is_flat ? " 0" : "") < 0)
        return vimg_error_set(err, ENOMEM, "Out of memory");
    free(*lines);
    *lines = n;
    return 0;
}

/* Extent files of a descriptor-file image, and the extent lines naming them. */
static int
vmdk_create_extents(const char *filename, const struct vmdk_create_params *p, char **lines,
                    struct vimg_error *err)
{
    uint64_t left = p->size / VMDK_SECTOR;
    unsigned index = 1;
    int ret = 0;

    do {
        uint64_t n = p->is_split && left > VMDK_SPLIT_SECTORS ? VMDK_SPLIT_SECTORS : left;
        char *path = vmdk_extent_name(filename, p, index++);
        struct vimg_node *file;

        if (!path)
            return vimg_error_set(err, ENOMEM, "Out of memory");
        if (p->is_flat) {
            ret = vmdk_new_file(path, n * VMDK_SECTOR, &file, err);
            if (ret == 0)
                vimg_close(file);
        } else {
            ret = vmdk_create_sparse(path, p, n, NULL, err);
        }
        if (ret == 0)
            ret = vmdk_add_extent_line(lines, p, n, path, err);
        free(path);
        left -= n;
    } while (ret == 0 && left);
    return ret;
}

static int
vmdk_parent_cid(const char *filename, struct vmdk_create_params *p, struct vimg_error *err)
{
    struct vimg_node *parent;
    char *path = NULL;
    const char *slash = strrchr(filename, '/');
    int ret;

    p->parent_cid = UINT32_MAX;
    if (!p->backing)
        return 0;
    if (p->backing[0] != '/' && slash) {
        if (asprintf(&path, "%.*s/%s", (int)(slash - filename), filename, p->backing) < 0)
            return vimg_error_set(err, ENOMEM, "Out of memory");
    }
    ret = vimg_open(&parent, path ? path : p->backing, NULL, NULL, VIMG_OPEN_NO_BACKING, err);
    free(path);
    if (ret < 0)
        return ret;
    if (strcmp(parent->drv->name, "vmdk") != 0) {
        ret = vimg_error_set(err, EINVAL, "Invalid backing file format: %s. Must be vmdk.",
                             parent->drv->name);
    } else {
        p->parent_cid = ((struct vmdk_state *)parent->state)->desc.cid;
    }
    vimg_close(parent);
    return ret;
}

static int
vmdk_write_desc_file(const char *filename, const char *desc, struct vimg_error *err)
{
    struct vimg_node *file;
    int ret;

    if ((ret = vmdk_new_file(filename, strlen(desc), &file, err)) < 0)
        return ret;
    ret = vimg_node_pwrite(file, 0, desc, strlen(desc), 0, err);
    if (ret == 0)
        ret = vimg_node_flush(file, err);
    vimg_close(file);
    return ret;
}

static int
vmdk_create(const char *filename, struct vimg_opts *opts, struct vimg_error *err)
{
    struct vmdk_create_params p;
    char *lines = NULL, *desc = NULL;
    uint32_t cid;
    int ret;

    (void)vimg_opts_get(opts, "preallocation");
    if ((ret = vmdk_parse_create(opts, &p, err)) < 0 ||
        (ret = vmdk_parent_cid(filename, &p, err)) < 0)
        return ret;
    if (getrandom(&cid, sizeof(cid), 0) != sizeof(cid))
        return vimg_error_set_errno(err, errno, "Could not generate a CID");
    if (p.is_flat || p.is_split) {
        ret = vmdk_create_extents(filename, &p, &lines, err);
        if (ret == 0 && !(desc = vmdk_make_desc(&p, cid, lines)))
            ret = vimg_error_set(err, ENOMEM, "Out of memory");
        if (ret == 0)
            ret = vmdk_write_desc_file(filename, desc, err);
    } else {
        const char *slash = strrchr(filename, '/');
        p.is_flat = false;
        ret = vmdk_add_extent_line(&lines, &p, p.size / VMDK_SECTOR,
                                   slash ? slash + 1 : filename, err);
        if (ret == 0 && !(desc = vmdk_make_desc(&p, cid, lines)))
            ret = vimg_error_set(err, ENOMEM, "Out of memory");
        if (ret == 0)
            ret = vmdk_create_sparse(filename, &p, p.size / VMDK_SECTOR, desc, err);
    }
    free(lines);
    free(desc);
    return ret;
}

const struct vimg_driver vimg_vmdk_driver = {
    .name = "vmdk",
    .kind = VIMG_DRIVER_FORMAT,
    .state_size = sizeof(struct vmdk_state),
    .has_zero_init = true,
    .supports_backing = true,
    .probe = vmdk_probe,
    .open = vmdk_open,
    .close = vmdk_close,
    .create_opts = vmdk_create_opts,
    .create = vmdk_create,
    .pread = vmdk_read,
    .pwritev = vmdk_write,
    .pwrite_compressed = vmdk_pwrite_compressed,
    .flush = vmdk_flush,
    .block_status = vmdk_block_status,
    .check_backing = vmdk_check_backing,
    .length = vmdk_length,
    .allocated_size = vmdk_allocated_size,
    .info = vmdk_info,
    .check = vmdk_check,
};
