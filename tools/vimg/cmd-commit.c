/*
 * vimg commit: qemu-img commit. Writes what the layers above BASE (by
 * default the image's backing file) hold into BASE: data as read through
 * the image, zeros as zero writes that may unmap. Without -d and -b the
 * image is emptied afterwards, so that it reads as its backing file.
 *
 * The chain is opened read-only, sharing every permission, and the image and
 * BASE are opened for writing beside it (taking the locks); the chain never
 * reads BASE for a range it copies, since those are allocated above it. -r is accepted and checked but does not
 * slow the copy. The -p figures are the share of the image walked so far;
 * qemu-img prints its block job's progress, whose number of lines depends
 * on timing.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "vimg.h"

enum { OPT_OBJECT = 256, OPT_IMAGE_OPTS };

#define CHUNK_BYTES ((uint64_t)2 << 20)

struct commit_args {
    const char *fmt;
    const char *base;           /* -b */
    const char *cache;
    const char *filename;
    bool is_keep;               /* -d, or implied by -b */
    bool is_progress;
    bool is_quiet;
    bool is_image_opts;
};

struct commit {
    struct vimg_node *chain;            /* the whole chain, read-only, sharing everything */
    struct vimg_node *top;              /* the image alone, for writing */
    struct vimg_node *base_in_chain;    /* BASE as the chain has it (read-only) */
    struct vimg_node *base;             /* BASE opened for writing */
    uint64_t size;
    uint8_t *buf;
    struct tool_meter meter;
};

static bool
rate_limit_is_valid(const char *arg)
{
    uint64_t v;

    if (vimg_parse_size(arg, &v) == 0 && v <= INT64_MAX)
        return true;
    tool_error("Invalid rate limit specified. You may use k, M, G, T, P or E suffixes for");
    tool_error("kilobytes, megabytes, gigabytes, terabytes, petabytes and exabytes.");
    return false;
}

static int
parse_commit_opt(int c, char **argv, struct commit_args *a)
{
    switch (c) {
    case 'f': a->fmt = optarg; return 0;
    case 'b': a->base = optarg; a->is_keep = true; return 0;
    case 'd': a->is_keep = true; return 0;
    case 'p': a->is_progress = true; return 0;
    case 'q': a->is_quiet = true; return 0;
    case 't': a->cache = optarg; return 0;
    case 'r': return rate_limit_is_valid(optarg) ? 0 : 1;
    case 'h': return 2;
    case OPT_OBJECT: return img_add_object(optarg) ? 0 : 1;
    case OPT_IMAGE_OPTS: a->is_image_opts = true; return 0;
    case ':':
        return img_usage_error("missing argument for option '%s'", argv[optind - 1]);
    default:
        return img_bad_option(argv);
    }
}

/* Returns 0 to go on, 1 after an error, 2 for help. */
static int
parse_commit_args(int argc, char **argv, struct commit_args *a)
{
    static const struct option long_opts[] = {
        { "help", no_argument, NULL, 'h' },
        { "object", required_argument, NULL, OPT_OBJECT },
        { "image-opts", no_argument, NULL, OPT_IMAGE_OPTS },
        { NULL, 0, NULL, 0 },
    };
    unsigned flags = 0;
    int c, ret;

    opterr = 0;
    while ((c = getopt_long(argc, argv, ":f:ht:b:dpqr:", long_opts, NULL)) != -1) {
        if ((ret = parse_commit_opt(c, argv, a)) != 0)
            return ret;
    }
    if (a->is_quiet)
        a->is_progress = false;
    if (optind != argc - 1)
        return img_usage_error("Expecting one image file name");
    a->filename = argv[optind];
    if (a->cache && !img_cache_flags(a->cache, &flags, false))
        return 1;
    return 0;
}

/* Copies one run of at most CHUNK_BYTES at offset that layers above BASE decide; *n is its length. */
static int
commit_step(struct commit *c, uint64_t offset, uint64_t *n, struct vimg_error *err)
{
    struct vimg_block_status bs;
    int ret;

    if ((ret = vimg_node_block_status_above(c->chain, c->base_in_chain, offset, *n, &bs,
                                            err)) < 0)
        return ret;
    if (bs.bytes && bs.bytes < *n)
        *n = bs.bytes;
    if (!(bs.flags & VIMG_BS_ALLOCATED))
        return 0;
    if ((bs.flags & VIMG_BS_ZERO) && !(bs.flags & VIMG_BS_DATA))
        return vimg_node_pwrite_zeroes(c->base, offset, *n, VIMG_REQ_MAY_UNMAP, err);
    if ((ret = vimg_node_pread(c->chain, offset, c->buf, *n, 0, err)) < 0)
        return ret;
    return vimg_node_pwrite(c->base, offset, c->buf, *n, 0, err);
}

static int
commit_copy(struct commit *c, struct vimg_error *err)
{
    int64_t base_size = vimg_node_length(c->base, err);
    int ret;

    if (base_size < 0)
        return (int)base_size;
    if ((uint64_t)base_size < c->size &&
        (ret = vimg_node_truncate(c->base, c->size, false, "off", err)) < 0)
        return ret;
    if (!(c->buf = malloc(CHUNK_BYTES)))
        return vimg_error_set(err, ENOMEM, "Out of memory");
    for (uint64_t offset = 0, n; offset < c->size; offset += n) {
        n = c->size - offset < CHUNK_BYTES ? c->size - offset : CHUNK_BYTES;
        if ((ret = commit_step(c, offset, &n, err)) < 0)
            return ret;
        tool_meter_set(&c->meter, (float)((double)(offset + n) * 100 / (double)c->size));
    }
    return vimg_node_flush(c->base, err);
}

/* Finds BASE in the chain and opens it for writing; false after printing the error. */
static bool
open_base(const struct commit_args *a, struct commit *c, unsigned flags)
{
    struct vimg_error err = { 0 };
    struct vimg_node *b;

    if (!vimg_node_backing(c->chain)) {
        tool_error("Image does not have a backing file");
        return false;
    }
    b = a->base ? vimg_image_find_backing(c->chain, a->base) : vimg_node_backing(c->chain);
    if (!b) {
        tool_error("Did not find '%s' in the backing chain of '%s'", a->base, a->filename);
        return false;
    }
    c->base_in_chain = b;
    flags |= VIMG_OPEN_RDWR | VIMG_OPEN_RESIZE;
    if (vimg_open(&c->base, vimg_node_filename(b), vimg_node_format(b), NULL, flags,
                  &err) < 0) {
        tool_error_err(&err, "Could not open '%s': ", vimg_node_filename(b));
        return false;
    }
    return true;
}

static int
run_commit(const struct commit_args *a)
{
    struct vimg_error err = { 0 };
    struct commit c = { 0 };
    unsigned flags = VIMG_OPEN_RDWR;
    int64_t size;
    int ret = 1;

    if (a->cache)
        img_cache_flags(a->cache, &flags, false);
    /* The chain is read apart from the two images written, which lock their files. */
    c.chain = img_open(a->is_image_opts, a->filename, a->fmt,
                       (flags & ~VIMG_OPEN_RDWR) | VIMG_OPEN_FORCE_SHARE, a->is_quiet);
    if (!c.chain)
        return 1;
    if (!(c.top = img_open(a->is_image_opts, a->filename, a->fmt,
                           flags | VIMG_OPEN_NO_BACKING, a->is_quiet)) ||
        !open_base(a, &c, flags))
        goto out;
    if ((size = vimg_node_length(c.chain, &err)) < 0) {
        tool_error("%s", err.msg);
        goto out;
    }
    c.size = (uint64_t)size;
    tool_meter_init(&c.meter, a->is_progress, 1.0f);
    tool_meter_set(&c.meter, 0);
    /* A format that cannot empty an image keeps the data, as with qemu-img (no error). */
    if (commit_copy(&c, &err) < 0 ||
        (!a->is_keep && vimg_image_make_empty(c.top, &err) < 0 && err.errnum != ENOTSUP)) {
        tool_error("%s", err.msg);
        goto out;
    }
    tool_meter_set(&c.meter, 100);
    tool_meter_end(&c.meter);
    if (!a->is_quiet)
        printf("Image committed.\n");
    ret = 0;
out:
    free(c.buf);
    vimg_close(c.base);
    vimg_close(c.top);
    vimg_close(c.chain);
    return ret;
}

int
cmd_commit(int argc, char **argv)
{
    struct commit_args a = { 0 };
    int ret = parse_commit_args(argc, argv, &a);

    if (ret == 2) {
        img_print_help();
        return 0;
    }
    if (ret != 0)
        return ret;
    return run_commit(&a);
}
