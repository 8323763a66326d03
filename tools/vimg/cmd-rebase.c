/*
 * vimg rebase: qemu-img rebase. Changes the backing file an image records.
 * With -u only the name and format change. Otherwise every range the image
 * leaves to its backing chain is compared between the old chain and the new
 * backing file (zeros past either one's end, or everywhere without one), and
 * the 512-byte sectors that differ are copied from the old chain into the
 * image before the name changes, so that the image reads the same after.
 *
 * The walk follows qemu-img 7.2 so that -p prints the same figures: 2 MiB
 * steps cut at allocation and backing-size boundaries, one step of
 * 100 / (size / 2 MiB) percent for each range that was compared. When the
 * new backing file is in the old chain, ranges no layer in between
 * allocates are skipped without comparing.
 *
 * -c (qemu-img 8.2's option; 7.2 has none) writes what is copied as
 * compressed clusters: each range to compare is widened to whole clusters,
 * read as the image reads now (its own data merged with the old chain's),
 * and every cluster that differs from the new backing file is written whole,
 * compressed, or as a zero cluster when it reads as zeros and the format has
 * them. A cluster the image already allocates in part (extended L2
 * subclusters) cannot take a compressed write, in vimg as in QEMU, and is
 * written plain. An encrypted image is refused: its compressed clusters
 * would be stored in the clear (qemu-img 8.2 writes them so).
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "vimg.h"

enum { OPT_OBJECT = 256, OPT_IMAGE_OPTS };

#define IO_BUF_SIZE  ((uint64_t)2 << 20)
#define SECTOR_SIZE  512u

struct rebase_args {
    const char *fmt;
    const char *backing;        /* -b; NULL when not given */
    const char *backing_fmt;    /* -F */
    const char *cache;
    const char *src_cache;
    const char *filename;
    bool is_unsafe;
    bool is_progress;
    bool is_quiet;
    bool is_image_opts;
    bool is_force_share;
    bool is_compressed;         /* -c */
};

struct rebase {
    struct vimg_node *image;
    struct vimg_node *old_backing;  /* NULL: reads as zeros */
    struct vimg_node *new_backing;  /* NULL: reads as zeros */
    struct vimg_node *prefix;       /* the new backing file as a layer of the old chain */
    uint64_t size, old_size, new_size;
    uint8_t *buf_old, *buf_new;
    uint64_t buf_size;
    uint64_t cluster;               /* -c: the image's cluster size */
    uint64_t compared_until;        /* -c: clusters before this one are done */
    bool has_zero_writes;           /* -c: zero clusters need not be compressed */
    struct tool_meter meter;
};

static int
parse_rebase_opt(int c, char **argv, struct rebase_args *a)
{
    switch (c) {
    case 'f': a->fmt = optarg; return 0;
    case 'F': a->backing_fmt = optarg; return 0;
    case 'b': a->backing = optarg; return 0;
    case 'u': a->is_unsafe = true; return 0;
    case 'p': a->is_progress = true; return 0;
    case 'q': a->is_quiet = true; return 0;
    case 't': a->cache = optarg; return 0;
    case 'T': a->src_cache = optarg; return 0;
    case 'U': a->is_force_share = true; return 0;
    case 'c': a->is_compressed = true; return 0;
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
parse_rebase_args(int argc, char **argv, struct rebase_args *a)
{
    static const struct option long_opts[] = {
        { "help", no_argument, NULL, 'h' },
        { "object", required_argument, NULL, OPT_OBJECT },
        { "image-opts", no_argument, NULL, OPT_IMAGE_OPTS },
        { "force-share", no_argument, NULL, 'U' },
        { "compress", no_argument, NULL, 'c' },
        { NULL, 0, NULL, 0 },
    };
    unsigned flags = 0;
    int c, ret;

    opterr = 0;
    while ((c = getopt_long(argc, argv, ":hf:F:b:upt:T:qUc", long_opts, NULL)) != -1) {
        if ((ret = parse_rebase_opt(c, argv, a)) != 0)
            return ret;
    }
    if (a->is_quiet)
        a->is_progress = false;
    if (optind != argc - 1)
        return img_usage_error("Expecting one image file name");
    if (!a->is_unsafe && !a->backing)
        return img_usage_error("Must specify backing file (-b) or use unsafe mode (-u)");
    a->filename = argv[optind];
    if (a->cache && !img_cache_flags(a->cache, &flags, false))
        return 1;
    if (a->src_cache && !img_cache_flags(a->src_cache, &flags, true))
        return 1;
    if (a->backing_fmt && !vimg_format_exists(a->backing_fmt)) {
        tool_error("Invalid format name: '%s'", a->backing_fmt);
        return 1;
    }
    return 0;
}

/* Reads [offset, +n) of node as seen through it, zeros past its end (or without node). */
static int
read_or_zero(struct vimg_node *node, uint64_t node_size, uint64_t offset, uint8_t *buf,
             uint64_t n, struct vimg_error *err)
{
    uint64_t in = 0;

    if (node && offset < node_size)
        in = node_size - offset < n ? node_size - offset : n;
    if (in < n)
        memset(buf + in, 0, n - in);
    return in ? vimg_node_pread(node, offset, buf, in, 0, err) : 0;
}

/* Past the old backing file's end its zeros are written as zeros, as qemu-img does. */
static int
write_old(struct rebase *r, uint64_t offset, const uint8_t *buf, uint64_t n, bool is_zero,
          struct vimg_error *err)
{
    if (is_zero)
        return vimg_node_pwrite_zeroes(r->image, offset, n, 0, err);
    return vimg_node_pwrite(r->image, offset, buf, n, 0, err);
}

/* Copies into the image the sectors of [offset, +n) where the two chains differ. */
static int
copy_differences(struct rebase *r, uint64_t offset, uint64_t n, struct vimg_error *err)
{
    bool is_old_zero = !r->old_backing || offset >= r->old_size;
    int ret;

    if ((ret = read_or_zero(r->old_backing, r->old_size, offset, r->buf_old, n, err)) < 0) {
        vimg_error_prefix(err, "error while reading from old backing file: ");
        return ret;
    }
    if ((ret = read_or_zero(r->new_backing, r->new_size, offset, r->buf_new, n, err)) < 0) {
        vimg_error_prefix(err, "error while reading from new backing file: ");
        return ret;
    }
    for (uint64_t at = 0; at < n;) {
        uint64_t run = 0;
        bool differs = memcmp(r->buf_old + at, r->buf_new + at,
                              n - at < SECTOR_SIZE ? n - at : SECTOR_SIZE) != 0;
        while (at + run < n) {
            uint64_t len = n - at - run < SECTOR_SIZE ? n - at - run : SECTOR_SIZE;
            if ((memcmp(r->buf_old + at + run, r->buf_new + at + run, len) != 0) != differs)
                break;
            run += len;
        }
        if (differs && (ret = write_old(r, offset + at, r->buf_old + at, run, is_old_zero,
                                        err)) < 0) {
            vimg_error_prefix(err, "Error while writing to COW image: ");
            return ret;
        }
        at += run;
    }
    return 0;
}

static bool
is_zero(const uint8_t *buf, uint64_t n)
{
    return n == 0 || (buf[0] == 0 && memcmp(buf, buf + 1, n - 1) == 0);
}

/* How -c writes a cluster that differs. */
enum cluster_write {
    CW_COMPRESSED,
    CW_PLAIN,
    CW_ZERO,            /* zeros, in any way the format has */
    CW_ZERO_CLUSTER,    /* a zero cluster if the format has them, else compressed */
};

/* -c: writes the clusters of [offset, +n) from buf, all one way. */
static int
write_clusters(struct rebase *r, uint64_t offset, uint64_t n, const uint8_t *buf,
               enum cluster_write how, struct vimg_error *err)
{
    int ret = -ENOTSUP;

    if (how == CW_ZERO_CLUSTER) {
        ret = vimg_node_pwrite_zeroes(r->image, offset, n, VIMG_REQ_NO_FALLBACK, err);
        if (ret == -ENOTSUP)
            *err = (struct vimg_error){ 0 };
    }
    if (how == CW_ZERO)
        ret = vimg_node_pwrite_zeroes(r->image, offset, n, 0, err);
    else if (how == CW_PLAIN)
        ret = vimg_node_pwrite(r->image, offset, buf, n, 0, err);
    else if (ret == -ENOTSUP)
        ret = vimg_node_pwrite_compressed(r->image, offset, buf, n, err);
    if (ret < 0)
        vimg_error_prefix(err, "Error while writing to COW image: ");
    return ret;
}

/*
 * -c: how a differing cluster is written. A cluster the image allocates in
 * part (subclusters of extended L2) cannot take a compressed write, in vimg
 * as in QEMU: it is written plain. Zeros become a zero cluster where the
 * format has them (qcow2 v3), which takes no space at all.
 */
static int
cluster_write_kind(struct rebase *r, uint64_t offset, const uint8_t *buf, uint64_t n,
                   enum cluster_write *how, struct vimg_error *err)
{
    struct vimg_block_status bs;
    bool is_allocated = false, is_zeros = r->has_zero_writes && is_zero(buf, n);
    int ret;

    for (uint64_t at = 0; at < n && !is_allocated; at += bs.bytes) {
        if ((ret = vimg_node_block_status(r->image, offset + at, n - at, &bs, err)) < 0) {
            vimg_error_prefix(err, "error while reading image metadata: ");
            return ret;
        }
        is_allocated = (bs.flags & VIMG_BS_ALLOCATED) || bs.bytes == 0;
    }
    if (is_allocated)
        *how = is_zeros ? CW_ZERO : CW_PLAIN;
    else
        *how = is_zeros ? CW_ZERO_CLUSTER : CW_COMPRESSED;
    return 0;
}

/*
 * -c: compares [offset, +n), within one buffer and starting on a cluster,
 * cluster by cluster between the image as it reads now and the new backing
 * file, and writes the clusters that differ.
 */
static int
copy_clusters(struct rebase *r, uint64_t offset, uint64_t n, struct vimg_error *err)
{
    uint64_t run_start = 0, run_len = 0;
    enum cluster_write run_how = CW_COMPRESSED, how = CW_COMPRESSED;
    int ret;

    if ((ret = vimg_node_pread(r->image, offset, r->buf_old, n, 0, err)) < 0) {
        vimg_error_prefix(err, "error while reading from old backing file: ");
        return ret;
    }
    if ((ret = read_or_zero(r->new_backing, r->new_size, offset, r->buf_new, n, err)) < 0) {
        vimg_error_prefix(err, "error while reading from new backing file: ");
        return ret;
    }
    for (uint64_t at = 0; at < n; at += r->cluster) {
        uint64_t len = n - at < r->cluster ? n - at : r->cluster;
        bool differs = memcmp(r->buf_old + at, r->buf_new + at, len) != 0;

        if (differs && (ret = cluster_write_kind(r, offset + at, r->buf_old + at, len, &how,
                                                 err)) < 0)
            return ret;
        /* A run ends at a cluster that is the same, or written another way. */
        if (run_len && (!differs || how != run_how)) {
            if ((ret = write_clusters(r, offset + run_start, run_len, r->buf_old + run_start,
                                      run_how, err)) < 0)
                return ret;
            run_len = 0;
        }
        if (!differs)
            continue;
        if (!run_len) {
            run_start = at;
            run_how = how;
        }
        run_len += len;
    }
    return run_len ? write_clusters(r, offset + run_start, run_len, r->buf_old + run_start,
                                    run_how, err) : 0;
}

/* -c: [offset, +n) widened to whole clusters, skipping those already compared. */
static int
copy_differences_compressed(struct rebase *r, uint64_t offset, uint64_t n,
                            struct vimg_error *err)
{
    uint64_t start = offset / r->cluster * r->cluster;
    uint64_t end = (offset + n + r->cluster - 1) / r->cluster * r->cluster;
    uint64_t piece = r->buf_size / r->cluster * r->cluster;
    int ret;

    if (start < r->compared_until)
        start = r->compared_until;
    if (end > r->size)
        end = r->size;
    for (uint64_t pos = start; pos < end; pos += piece) {
        if ((ret = copy_clusters(r, pos, end - pos < piece ? end - pos : piece, err)) < 0)
            return ret;
    }
    if (end > r->compared_until)
        r->compared_until = end;
    return 0;
}

/* The length of the run at offset (at most n) and whether it is allocated above base. */
static int
allocation(struct vimg_node *node, struct vimg_node *base, uint64_t offset, uint64_t *n,
           bool *is_allocated, struct vimg_error *err)
{
    struct vimg_block_status bs;
    int ret = base ? vimg_node_block_status_above(node, base, offset, *n, &bs, err)
                   : vimg_node_block_status(node, offset, *n, &bs, err);

    if (ret < 0)
        return ret;
    if (bs.bytes && bs.bytes < *n)
        *n = bs.bytes;
    *is_allocated = bs.flags & VIMG_BS_ALLOCATED;
    return 0;
}

static int
rebase_step(struct rebase *r, uint64_t offset, uint64_t *n, float step,
            struct vimg_error *err)
{
    bool is_allocated;
    int ret;

    if ((ret = allocation(r->image, NULL, offset, n, &is_allocated, err)) < 0) {
        vimg_error_prefix(err, "error while reading image metadata: ");
        return ret;
    }
    if (is_allocated)
        return 0;
    /* Past the end of the old backing file counts as allocated above the prefix. */
    if (r->prefix && offset < r->old_size) {
        if (*n > r->old_size - offset)
            *n = r->old_size - offset;
        if ((ret = allocation(r->old_backing, r->prefix, offset, n, &is_allocated, err)) < 0) {
            vimg_error_prefix(err, "error while reading image metadata: ");
            return ret;
        }
        if (!is_allocated)
            return 0;
    }
    if (offset < r->old_size && *n > r->old_size - offset)
        *n = r->old_size - offset;
    if (r->new_backing && offset < r->new_size && *n > r->new_size - offset)
        *n = r->new_size - offset;
    ret = r->cluster ? copy_differences_compressed(r, offset, *n, err)
                     : copy_differences(r, offset, *n, err);
    if (ret < 0)
        return ret;
    tool_meter_add(&r->meter, step);
    return 0;
}

static int
rebase_copy(struct rebase *r, struct vimg_error *err)
{
    uint64_t steps = r->size / (r->size < IO_BUF_SIZE ? r->size : IO_BUF_SIZE);
    float step = (float)100 / (float)steps;
    int ret;

    /* A compressed write takes whole clusters, which may be larger than a step. */
    r->buf_size = r->cluster > IO_BUF_SIZE ? r->cluster : IO_BUF_SIZE;
    r->buf_old = malloc(r->buf_size);
    r->buf_new = malloc(r->buf_size);
    if (!r->buf_old || !r->buf_new)
        return vimg_error_set(err, ENOMEM, "Out of memory");
    for (uint64_t offset = 0, n; offset < r->size; offset += n) {
        n = r->size - offset < IO_BUF_SIZE ? r->size - offset : IO_BUF_SIZE;
        if ((ret = rebase_step(r, offset, &n, step, err)) < 0)
            return ret;
    }
    return vimg_node_flush(r->image, err);
}

static int64_t
length_or_fail(struct vimg_node *node, const char *what)
{
    struct vimg_error err = { 0 };
    int64_t len = vimg_node_length(node, &err);

    if (len < 0)
        tool_error("Could not get size of '%s': %s", what, err.msg);
    return len;
}

static struct vimg_node *
open_new_backing(const struct rebase_args *a, struct vimg_node *image)
{
    struct vimg_error err = { 0 };
    struct vimg_node *node = NULL;
    char *path = vimg_image_backing_path(image, a->backing);
    unsigned flags = a->is_force_share ? VIMG_OPEN_FORCE_SHARE : 0;

    if (!path) {
        tool_error("Out of memory");
        return NULL;
    }
    if (vimg_open(&node, path, a->backing_fmt, NULL, flags, &err) < 0) {
        tool_error_err(&err, "Could not open new backing file '%s': ", a->backing);
        node = NULL;
    }
    free(path);
    return node;
}

/* The layer of the old chain that is the same file as the new backing file, or NULL. */
static struct vimg_node *
find_prefix(struct vimg_node *image, struct vimg_node *new_backing)
{
    char want[PATH_MAX], have[PATH_MAX];

    if (!realpath(vimg_node_filename(new_backing), want))
        return NULL;
    for (struct vimg_node *n = vimg_node_backing(image); n; n = vimg_node_backing(n))
        if (realpath(vimg_node_filename(n), have) && strcmp(want, have) == 0)
            return n;
    return NULL;
}

static int
prepare_safe(const struct rebase_args *a, struct rebase *r)
{
    int64_t len;

    r->old_backing = vimg_node_backing(r->image);
    if ((len = length_or_fail(r->image, a->filename)) < 0)
        return -1;
    r->size = (uint64_t)len;
    if (r->old_backing) {
        if ((len = length_or_fail(r->old_backing, vimg_node_filename(r->old_backing))) < 0)
            return -1;
        r->old_size = (uint64_t)len;
    }
    if (a->backing[0]) {
        if (!(r->new_backing = open_new_backing(a, r->image)))
            return -1;
        if ((len = length_or_fail(r->new_backing, a->backing)) < 0)
            return -1;
        r->new_size = (uint64_t)len;
        r->prefix = find_prefix(r->image, r->new_backing);
    }
    return 0;
}

static int
run_rebase(const struct rebase_args *a)
{
    struct vimg_error err = { 0 };
    struct rebase r = { 0 };
    unsigned flags = VIMG_OPEN_RDWR | (a->is_unsafe ? VIMG_OPEN_NO_BACKING : 0);
    int ret = 1;

    if (a->cache)
        img_cache_flags(a->cache, &flags, false);
    tool_meter_init(&r.meter, a->is_progress, 2.0f);
    tool_meter_set(&r.meter, 0);
    if (!(r.image = img_open(a->is_image_opts, a->filename, a->fmt, flags, a->is_quiet)))
        goto out;
    if (a->is_compressed && !vimg_node_can_compress(r.image)) {
        tool_error("Compression not supported for this file format");
        goto out;
    }
    /* qcow2 stores compressed clusters unencrypted: refused as convert refuses it. */
    if (a->is_compressed && vimg_node_is_encrypted(r.image)) {
        tool_error("Compression and encryption not supported at the same time");
        goto out;
    }
    if (a->is_compressed) {
        r.cluster = vimg_node_cluster_size(r.image) ? vimg_node_cluster_size(r.image) : 65536;
        r.has_zero_writes = !vimg_node_needs_compressed_writes(r.image);
    }
    if (!a->is_unsafe) {
        if (prepare_safe(a, &r) < 0)
            goto out;
        if (r.size && rebase_copy(&r, &err) < 0) {
            tool_error("%s", err.msg);
            goto out;
        }
    }
    tool_meter_set(&r.meter, 100);
    if (a->backing && a->backing[0] && !a->backing_fmt) {
        tool_error("Could not change the backing file to '%s': backing format must be "
                   "specified", a->backing);
        goto out;
    }
    if (vimg_image_change_backing_file(r.image, a->backing, a->backing_fmt, &err) < 0) {
        tool_error("Could not change the backing file to '%s': %s",
                   a->backing ? a->backing : "", err.msg);
        goto out;
    }
    tool_meter_end(&r.meter);
    ret = 0;
out:
    free(r.buf_old);
    free(r.buf_new);
    vimg_close(r.new_backing);
    vimg_close(r.image);
    return ret;
}

int
cmd_rebase(int argc, char **argv)
{
    struct rebase_args a = { 0 };
    int ret = parse_rebase_args(argc, argv, &a);

    if (ret == 2) {
        img_print_help();
        return 0;
    }
    if (ret != 0)
        return ret;
    return run_rebase(&a);
}
