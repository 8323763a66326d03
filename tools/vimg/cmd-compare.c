/*
 * vimg compare: qemu-img compare. Walks both images by block status: runs
 * that are zeros in both are skipped, runs both images allocate are read in
 * chunks of at most 2 MiB and compared sector by sector, and a run only one
 * of them allocates must read as zeros in it. Past the shorter image, the
 * longer one must read as zeros ("Warning: Image size mismatch!"). Strict
 * mode (-s) fails on any size or block-status difference instead.
 *
 * Exit codes as qemu-img documents them: 0 identical, 1 different,
 * 2 an image could not be opened, 3 a block-status query failed, 4 a read
 * failed.
 */
#include <getopt.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "vimg.h"

enum { OPT_OBJECT = 256, OPT_IMAGE_OPTS };

enum {
    CMP_SAME = 0,
    CMP_DIFFERENT = 1,
    CMP_OPEN_ERROR = 2,
    CMP_STATUS_ERROR = 3,
    CMP_READ_ERROR = 4,
};

#define SECTOR_SIZE     512u
#define CHUNK_BYTES     ((uint64_t)2 << 20)
/* The block-status flags that strict mode compares. */
#define STRICT_FLAGS    (VIMG_BS_DATA | VIMG_BS_ZERO | VIMG_BS_OFFSET_VALID | \
                         VIMG_BS_ALLOCATED | VIMG_BS_COMPRESSED)

struct compare_image {
    const char *name;
    struct vimg_node *node;
    uint64_t size;
};

struct compare {
    struct compare_image img[2];
    bool is_strict;
    bool is_quiet;
    struct tool_meter meter;
    uint64_t progress_base;     /* the larger size: 100% */
    uint8_t *buf[2];
};

static void
say(const struct compare *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* A line on stdout unless -q. */
static void
say(const struct compare *c, const char *fmt, ...)
{
    va_list ap;

    if (c->is_quiet)
        return;
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
}

static void
advance(struct compare *c, uint64_t bytes)
{
    tool_meter_add(&c->meter, (float)bytes / (float)c->progress_base * 100);
}

static int
read_chunk(struct compare *c, int i, uint64_t offset, uint64_t bytes)
{
    struct vimg_error err = { 0 };

    if (vimg_node_pread(c->img[i].node, offset, c->buf[i], bytes, 0, &err) < 0) {
        tool_error("Error while reading offset %" PRIu64 " of %s: %s", offset, c->img[i].name,
                   err.msg);
        return CMP_READ_ERROR;
    }
    return CMP_SAME;
}

/* Image i must read as zeros in [offset, +bytes). */
static int
check_zeros(struct compare *c, int i, uint64_t offset, uint64_t bytes)
{
    int ret = read_chunk(c, i, offset, bytes);

    if (ret != CMP_SAME)
        return ret;
    for (uint64_t pos = 0; pos < bytes; pos += SECTOR_SIZE) {
        uint64_t n = bytes - pos < SECTOR_SIZE ? bytes - pos : SECTOR_SIZE;
        if (!vimg_buffer_is_zero(c->buf[i] + pos, n)) {
            say(c, "Content mismatch at offset %" PRIu64 "!\n", offset + pos);
            return CMP_DIFFERENT;
        }
    }
    return CMP_SAME;
}

static int
compare_data(struct compare *c, uint64_t offset, uint64_t bytes)
{
    int ret;

    if ((ret = read_chunk(c, 0, offset, bytes)) != CMP_SAME ||
        (ret = read_chunk(c, 1, offset, bytes)) != CMP_SAME)
        return ret;
    for (uint64_t pos = 0; pos < bytes; pos += SECTOR_SIZE) {
        uint64_t n = bytes - pos < SECTOR_SIZE ? bytes - pos : SECTOR_SIZE;
        if (memcmp(c->buf[0] + pos, c->buf[1] + pos, n) != 0) {
            say(c, "Content mismatch at offset %" PRIu64 "!\n", offset + pos);
            return CMP_DIFFERENT;
        }
    }
    return CMP_SAME;
}

static int
block_status(struct compare *c, int i, uint64_t offset, uint64_t end,
             struct vimg_block_status *bs)
{
    struct vimg_error err = { 0 };

    if (vimg_node_block_status_above(c->img[i].node, NULL, offset, end - offset, bs, &err) < 0) {
        tool_error("Sector allocation test failed for %s", c->img[i].name);
        return CMP_STATUS_ERROR;
    }
    if (bs->bytes == 0 || bs->bytes > end - offset)
        bs->bytes = end - offset;
    return CMP_SAME;
}

/* One step over the common part; *bytes says how far it got. */
static int
compare_step(struct compare *c, uint64_t offset, uint64_t end, uint64_t *bytes)
{
    struct vimg_block_status bs[2];
    bool is_alloc[2];
    uint64_t n;
    int ret;

    for (int i = 0; i < 2; i++) {
        if ((ret = block_status(c, i, offset, end, &bs[i])) != CMP_SAME)
            return ret;
        is_alloc[i] = bs[i].flags & VIMG_BS_ALLOCATED;
    }
    n = bs[0].bytes < bs[1].bytes ? bs[0].bytes : bs[1].bytes;
    if (c->is_strict && (bs[0].flags & STRICT_FLAGS) != (bs[1].flags & STRICT_FLAGS)) {
        say(c, "Strict mode: Offset %" PRIu64 " block status mismatch!\n", offset);
        return CMP_DIFFERENT;
    }
    if ((bs[0].flags & VIMG_BS_ZERO) && (bs[1].flags & VIMG_BS_ZERO)) {
        *bytes = n;
        return CMP_SAME;
    }
    n = n < CHUNK_BYTES ? n : CHUNK_BYTES;
    *bytes = n;
    if (is_alloc[0] == is_alloc[1])
        return is_alloc[0] ? compare_data(c, offset, n) : CMP_SAME;
    return check_zeros(c, is_alloc[0] ? 0 : 1, offset, n);
}

/* Past the end of the shorter image, the longer one (index i) must read as zeros. */
static int
compare_tail(struct compare *c, int i, uint64_t offset)
{
    struct vimg_block_status bs;
    uint64_t end = c->img[i].size, n;
    int ret;

    say(c, "Warning: Image size mismatch!\n");
    while (offset < end) {
        if ((ret = block_status(c, i, offset, end, &bs)) != CMP_SAME)
            return ret;
        n = bs.bytes;
        /* Runs that are unallocated or known to read as zeros need no reading. */
        if ((bs.flags & VIMG_BS_ALLOCATED) && !(bs.flags & VIMG_BS_ZERO)) {
            n = n < CHUNK_BYTES ? n : CHUNK_BYTES;
            if ((ret = check_zeros(c, i, offset, n)) != CMP_SAME)
                return ret;
        }
        offset += n;
        advance(c, n);
    }
    return CMP_SAME;
}

static int
compare_images(struct compare *c)
{
    uint64_t common = c->img[0].size < c->img[1].size ? c->img[0].size : c->img[1].size;
    uint64_t offset = 0, n;
    int ret;

    if (c->img[0].size != c->img[1].size && c->is_strict) {
        say(c, "Strict mode: Image size mismatch!\n");
        return CMP_DIFFERENT;
    }
    while (offset < common) {
        if ((ret = compare_step(c, offset, common, &n)) != CMP_SAME)
            return ret;
        offset += n;
        advance(c, n);
    }
    if (c->img[0].size != c->img[1].size &&
        (ret = compare_tail(c, c->img[0].size > common ? 0 : 1, common)) != CMP_SAME)
        return ret;
    say(c, "Images are identical.\n");
    return CMP_SAME;
}

static int
open_images(struct compare *c, bool is_image_opts, const char *const fmt[2], unsigned flags)
{
    struct vimg_error err = { 0 };

    for (int i = 0; i < 2; i++) {
        int64_t len;
        c->img[i].node = img_open(is_image_opts, c->img[i].name, fmt[i], flags, c->is_quiet);
        if (!c->img[i].node)
            return CMP_OPEN_ERROR;
        if ((len = vimg_node_length(c->img[i].node, &err)) < 0) {
            tool_error("Can't get size of %s: %s", c->img[i].name, err.msg);
            return CMP_OPEN_ERROR;
        }
        c->img[i].size = (uint64_t)len;
        if (posix_memalign((void **)&c->buf[i], 4096, CHUNK_BYTES) != 0) {
            tool_error("Out of memory");
            return CMP_OPEN_ERROR;
        }
    }
    c->progress_base = c->img[0].size > c->img[1].size ? c->img[0].size : c->img[1].size;
    return CMP_SAME;
}

struct compare_args {
    const char *fmt[2];
    const char *cache;
    bool is_image_opts;
    bool is_progress;
    unsigned flags;
};

/* Returns -1 to go on, else the exit code. */
static int
parse_args(struct compare_args *a, struct compare *c, int argc, char **argv)
{
    static const struct option long_opts[] = {
        { "help", no_argument, NULL, 'h' },
        { "object", required_argument, NULL, OPT_OBJECT },
        { "image-opts", no_argument, NULL, OPT_IMAGE_OPTS },
        { "force-share", no_argument, NULL, 'U' },
        { NULL, 0, NULL, 0 },
    };
    int opt;

    opterr = 0;
    while ((opt = getopt_long(argc, argv, ":hf:F:T:pqsU", long_opts, NULL)) != -1) {
        switch (opt) {
        case 'f': a->fmt[0] = optarg; break;
        case 'F': a->fmt[1] = optarg; break;
        case 'T': a->cache = optarg; break;
        case 'p': a->is_progress = true; break;
        case 'q': c->is_quiet = true; break;
        case 's': c->is_strict = true; break;
        case 'U': a->flags |= VIMG_OPEN_FORCE_SHARE; break;
        case OPT_IMAGE_OPTS: a->is_image_opts = true; break;
        case OPT_OBJECT:
            if (!img_add_object(optarg))
                return CMP_OPEN_ERROR;
            break;
        case 'h':
            img_print_help();
            return 0;
        case ':': return img_usage_error("missing argument for option '%s'", argv[optind - 1]);
        default: return img_bad_option(argv);
        }
    }
    if (optind != argc - 2)
        return img_usage_error("Expecting two image file names");
    c->img[0].name = argv[optind];
    c->img[1].name = argv[optind + 1];
    return -1;
}

static int
run_compare(struct compare *c, const struct compare_args *a)
{
    unsigned flags = a->flags;
    int ret;

    if (a->cache && !img_cache_flags(a->cache, &flags, true))
        return CMP_OPEN_ERROR;
    if ((ret = open_images(c, a->is_image_opts, a->fmt, flags)) != CMP_SAME)
        return ret;
    tool_meter_set(&c->meter, 0);
    return compare_images(c);
}

int
cmd_compare(int argc, char **argv)
{
    struct compare_args a = { 0 };
    struct compare c = { 0 };
    int ret;

    if ((ret = parse_args(&a, &c, argc, argv)) >= 0)
        return ret;
    tool_meter_init(&c.meter, a.is_progress && !c.is_quiet, 2.0f);
    ret = run_compare(&c, &a);
    tool_meter_end(&c.meter);
    for (int i = 0; i < 2; i++) {
        vimg_close(c.img[i].node);
        free(c.buf[i]);
    }
    return ret;
}
