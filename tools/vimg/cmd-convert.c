/*
 * vimg convert: qemu-img convert. Copies one or more sources, concatenated,
 * into a new target (created with their total size) or an existing one (-n).
 *
 * A planner walks the sources by block status (through the backing chain, or
 * the top layer only when the target has a backing file) and cuts them into
 * chunks: data of at most 2 MiB, zero runs and backing runs. A pool of
 * workers (-m, at most twice the CPUs) reads the data chunks in parallel and
 * writes them in order (any order with -W). Zero runs inside data become
 * holes when they are at least -S bytes long; zero areas are not written at all when the target reads as
 * zeros already (a new image with zero-init, or --target-is-zero), and are
 * written with zero writes that may unmap otherwise. -C copies data through
 * vimg_node_copy_range, falling back to reading and writing where the two
 * files cannot share a copy (another filesystem). -c writes cluster-sized
 * compressed chunks; a qcow2 target's chunks are compressed by their workers
 * at once and stored as they finish, each chunk's clusters together.
 *
 * The -p figures follow qemu-img: the share of "allocated" bytes (data, and
 * zeros with -S 0) written so far, counted by a first pass over the block
 * status, so that the same chunks give the same lines. --salvage turns read
 * and block-status errors into warnings, copying unreadable sectors as zeros.
 *
 * -l reads the first source's internal snapshot (loaded read-only, as
 * qemu-img does); -s NAME, which qemu-img had until 3.0, is -l with a bare
 * ID or name (7.2 rejects it; vimg keeps it for old scripts). --bitmaps
 * copies the persistent bitmaps of the (single) source into the target
 * after the data.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <vimg/pool.h>

#include "vimg.h"

enum {
    OPT_OBJECT = 256,
    OPT_IMAGE_OPTS,
    OPT_TARGET_IMAGE_OPTS,
    OPT_SALVAGE,
    OPT_TARGET_IS_ZERO,
    OPT_BITMAPS,
    OPT_SKIP_BROKEN_BITMAPS,
};

#define SECTOR_SIZE       512u
#define CHUNK_BYTES       ((uint64_t)2 << 20)    /* data read and written at a time */
#define ZERO_CHUNK_BYTES  ((uint64_t)1 << 30)    /* largest zero write */
#define MAX_SPARSE_BYTES  ((int64_t)16 << 20)    /* largest -S */
#define MAX_WORKERS       16
#define BUF_ALIGN         4096

struct convert_args {
    const char *src_fmt;
    const char *out_fmt;
    const char *base;             /* -B */
    const char *base_fmt;         /* -F */
    struct img_snapshot_param snapshot;  /* -l */
    const char *cache;            /* -t */
    const char *src_cache;        /* -T */
    char *options;                /* every -o, joined with ',' */
    int64_t min_sparse;           /* -S, bytes; 0 = write everything */
    int64_t rate_limit;           /* -r, bytes per second; 0 = unlimited */
    unsigned n_workers;           /* -m */
    bool has_sparse;
    bool is_compressed;
    bool is_copy_range;
    bool is_progress;
    bool is_quiet;
    bool skip_create;
    bool is_image_opts;
    bool is_target_image_opts;
    bool is_target_zero;
    bool is_out_of_order;
    bool is_force_share;
    bool is_salvage;
    bool has_bitmaps;
    bool skip_broken_bitmaps;
    char **src_names;
    int n_srcs;
    const char *out_name;
};

enum chunk_status {
    CHUNK_DATA,
    CHUNK_ZERO,
    CHUNK_BACKING,      /* left to the target's backing file */
};

struct chunk {
    int src_index;
    uint64_t src_offset;
    uint64_t offset;          /* in the target */
    uint64_t bytes;
    enum chunk_status status;
};

/* Where the planner is, and the block status it has cached. */
struct planner {
    int src_index;
    uint64_t src_offset;
    uint64_t offset;
    uint64_t status_end;      /* source offset where the cached status ends */
    enum chunk_status status;
};

struct convert_src {
    struct vimg_node *node;
    uint64_t size;
};

struct convert {
    struct convert_src *srcs;
    int n_srcs;
    struct vimg_bitmap_info *bitmaps;   /* --bitmaps: the first source's */
    size_t n_bitmaps;
    struct vimg_node *target;
    uint64_t total;
    uint64_t min_sparse;
    uint64_t alignment;       /* zero runs in data start and end on this boundary */
    uint64_t cluster;         /* compressed chunk size */
    bool has_zero_init;
    bool target_has_backing;
    bool is_compressed;
    bool is_compress_unordered;   /* compressed chunks are written in any order */
    bool is_copy_range;
    bool is_out_of_order;
    bool is_salvage;
    struct tool_meter meter;
    uint64_t counted_total;   /* bytes the progress figures count */

    pthread_mutex_t lock;     /* protects everything below */
    pthread_cond_t turn;      /* next_seq moved */
    uint64_t next_seq;        /* the job whose write may go next (in-order mode) */
    uint64_t counted_done;
    bool has_failed;
    char *failure;            /* the first error line, malloc'd */
    void **free_bufs;         /* CHUNK_BYTES buffers for reuse */
    size_t n_free_bufs;
    size_t cap_free_bufs;
};

struct convert_job {
    struct convert *c;
    struct chunk ch;
    uint64_t seq;
    void *buf;
};

/* ---- arguments ---- */

static bool
append_options(char **all, const char *more)
{
    char *joined;

    if (!*all) {
        *all = strdup(more);
        return *all != NULL;
    }
    if (asprintf(&joined, "%s,%s", *all, more) < 0)
        return false;
    free(*all);
    *all = joined;
    return true;
}

/* qemu-img refuses an empty list, a leading comma and a final unescaped one. */
static bool
option_list_is_valid(const char *list)
{
    size_t len = strlen(list), n_commas = 0;

    if (len == 0 || list[0] == ',')
        return false;
    while (n_commas < len && list[len - 1 - n_commas] == ',')
        n_commas++;
    return n_commas % 2 == 0;
}

static bool
options_want_help(const char *options)
{
    struct vimg_opts *o = vimg_opts_new();
    bool is_help = false;

    if (o && vimg_opts_parse(o, options, NULL, NULL) == 0)
        is_help = (vimg_opts_has(o, "help") && strcmp(vimg_opts_peek(o, "help"), "on") == 0) ||
                  (vimg_opts_has(o, "?") && strcmp(vimg_opts_peek(o, "?"), "on") == 0);
    vimg_opts_free(o);
    return is_help;
}

static bool
parse_sparse(struct convert_args *a, const char *value)
{
    int64_t n = tool_cvtnum("buffer size for sparse output", value);

    if (n < 0)
        return false;
    if (n % SECTOR_SIZE || n > MAX_SPARSE_BYTES) {
        tool_error("Invalid buffer size for sparse output specified. Valid sizes are multiples "
                   "of 512 up to 16777216. Select 0 to disable sparse detection (fully "
                   "allocates output).");
        return false;
    }
    a->min_sparse = n;
    a->has_sparse = true;
    return true;
}

static bool
parse_workers(struct convert_args *a, const char *value)
{
    char *end;
    long n;

    errno = 0;
    n = strtol(value, &end, 0);
    if (errno || end == value || *end || n < 1 || n > MAX_WORKERS) {
        tool_error("Invalid number of coroutines. Allowed number of coroutines is between 1 "
                   "and %d", MAX_WORKERS);
        return false;
    }
    a->n_workers = (unsigned)n;
    return true;
}

/* One option of getopt; returns 0 to go on, else the exit code. */
static int
parse_option(struct convert_args *a, int c, char **argv)
{
    switch (c) {
    case 'f': a->src_fmt = optarg; break;
    case 'O': a->out_fmt = optarg; break;
    case 'B': a->base = optarg; break;
    case 'F': a->base_fmt = optarg; break;
    case 'C': a->is_copy_range = true; break;
    case 'c': a->is_compressed = true; break;
    case 'n': a->skip_create = true; break;
    case 'p': a->is_progress = true; break;
    case 'q': a->is_quiet = true; break;
    case 't': a->cache = optarg; break;
    case 'T': a->src_cache = optarg; break;
    case 'W': a->is_out_of_order = true; break;
    case 'U': a->is_force_share = true; break;
    case OPT_IMAGE_OPTS: a->is_image_opts = true; break;
    case OPT_TARGET_IMAGE_OPTS: a->is_target_image_opts = true; break;
    case OPT_SALVAGE: a->is_salvage = true; break;
    case OPT_TARGET_IS_ZERO: a->is_target_zero = true; break;
    case OPT_BITMAPS: a->has_bitmaps = true; break;
    case OPT_SKIP_BROKEN_BITMAPS: a->skip_broken_bitmaps = true; break;
    case 'o':
        if (!option_list_is_valid(optarg)) {
            tool_error("Invalid option list: %s", optarg);
            return 1;
        }
        return append_options(&a->options, optarg) ? 0 : 1;
    case 'S': return parse_sparse(a, optarg) ? 0 : 1;
    case 'm': return parse_workers(a, optarg) ? 0 : 1;
    case 'l': return img_snapshot_param_parse(&a->snapshot, optarg) ? 0 : 1;
    case 's': img_snapshot_param_set_bare(&a->snapshot, optarg); return 0;
    case 'r':
        a->rate_limit = tool_cvtnum("rate limit", optarg);
        return a->rate_limit < 0 ? 1 : 0;
    case OPT_OBJECT: return img_add_object(optarg) ? 0 : 1;
    case ':': return img_usage_error("missing argument for option '%s'", argv[optind - 1]);
    default: return img_bad_option(argv);
    }
    return 0;
}

/* Returns -1 to go on, else the exit code (0 after -h). */
static int
parse_args(struct convert_args *a, int argc, char **argv)
{
    static const struct option long_opts[] = {
        { "help", no_argument, NULL, 'h' },
        { "object", required_argument, NULL, OPT_OBJECT },
        { "image-opts", no_argument, NULL, OPT_IMAGE_OPTS },
        { "target-image-opts", no_argument, NULL, OPT_TARGET_IMAGE_OPTS },
        { "salvage", no_argument, NULL, OPT_SALVAGE },
        { "target-is-zero", no_argument, NULL, OPT_TARGET_IS_ZERO },
        { "bitmaps", no_argument, NULL, OPT_BITMAPS },
        { "skip-broken-bitmaps", no_argument, NULL, OPT_SKIP_BROKEN_BITMAPS },
        { "force-share", no_argument, NULL, 'U' },
        { NULL, 0, NULL, 0 },
    };
    int c, ret;

    opterr = 0;
    while ((c = getopt_long(argc, argv, ":hf:O:B:CcF:o:l:s:S:pt:T:qnm:WUr:", long_opts,
                            NULL)) != -1) {
        if (c == 'h') {
            img_print_help();
            return 0;
        }
        if ((ret = parse_option(a, c, argv)) != 0)
            return ret;
    }
    a->n_srcs = argc - optind - 1;
    a->src_names = argv + optind;
    a->out_name = a->n_srcs >= 0 ? argv[argc - 1] : NULL;
    return -1;
}

static int
print_options_help(const struct convert_args *a)
{
    struct vimg_error err = { 0 };
    char *text;

    if (vimg_create_help(a->out_fmt, a->n_srcs >= 1 ? a->out_name : NULL, &text, &err) < 0) {
        tool_error("%s", err.msg);
        return 1;
    }
    fputs(text, stdout);
    free(text);
    return 0;
}

/* The checks qemu-img makes before opening anything, in its order. Returns -1 to go on. */
static int
check_args(struct convert_args *a)
{
    if (a->skip_broken_bitmaps && !a->has_bitmaps) {
        tool_error("Use of --skip-broken-bitmaps requires --bitmaps");
        return 1;
    }
    if (a->is_copy_range && a->is_compressed) {
        tool_error("Cannot enable copy offloading when -c is used");
        return 1;
    }
    if (a->is_copy_range && a->has_sparse) {
        tool_error("Cannot enable copy offloading when -S is used");
        return 1;
    }
    if (a->is_target_image_opts && !a->skip_create) {
        tool_error("--target-image-opts requires use of -n flag");
        return 1;
    }
    if (a->is_target_zero && !a->skip_create) {
        tool_error("--target-is-zero requires use of -n flag");
        return 1;
    }
    if (a->skip_create && a->options) {
        tool_error("-o has no effect when skipping image creation");
        return 1;
    }
    if (!a->out_fmt && !a->is_target_image_opts)
        a->out_fmt = "raw";
    if (a->options && options_want_help(a->options))
        return print_options_help(a);
    if (a->n_srcs < 1) {
        tool_error("Must specify image file name");
        return 1;
    }
    return -1;
}

/* ---- opening ---- */

static bool
open_sources(const struct convert_args *a, unsigned flags, struct convert *c)
{
    struct vimg_error err = { 0 };

    c->srcs = calloc((size_t)a->n_srcs, sizeof(*c->srcs));
    if (!c->srcs)
        return false;
    for (int i = 0; i < a->n_srcs; i++) {
        int64_t len;
        c->srcs[i].node = img_open(a->is_image_opts, a->src_names[i], a->src_fmt, flags,
                                   a->is_quiet);
        if (!c->srcs[i].node)
            return false;
        c->n_srcs = i + 1;
        len = vimg_node_length(c->srcs[i].node, &err);
        if (len < 0) {
            tool_error("Could not get size of %s: %s", a->src_names[i], err.msg);
            return false;
        }
        c->srcs[i].size = (uint64_t)len;
        c->total += (uint64_t)len;
    }
    return true;
}

/* --bitmaps: the source's bitmaps, which must all be consistent unless broken ones are skipped. */
static bool
check_source_bitmaps(const struct convert_args *a, struct convert *c)
{
    struct vimg_error err = { 0 };

    if (a->n_srcs > 1) {
        tool_error("Copying bitmaps only possible with single source");
        return false;
    }
    if (vimg_image_bitmap_list(c->srcs[0].node, &c->bitmaps, &c->n_bitmaps, &err) < 0) {
        if (err.errnum == ENOTSUP)
            tool_error("Source lacks bitmap support");
        else
            tool_error("%s", err.msg);
        return false;
    }
    for (size_t i = 0; i < c->n_bitmaps && !a->skip_broken_bitmaps; i++) {
        if (c->bitmaps[i].is_in_use) {
            tool_error("Cannot copy inconsistent bitmap '%s'", c->bitmaps[i].name);
            fprintf(stderr, "Try --skip-broken-bitmaps, or use 'vimg bitmap --remove' to "
                    "delete it\n");
            return false;
        }
    }
    return true;
}

/* -l and --bitmaps: qemu-img's checks of the sources, in its order. */
static bool
check_source_features(const struct convert_args *a, struct convert *c)
{
    if (a->snapshot.param && !a->snapshot.is_dotted && a->n_srcs > 1) {
        tool_error("No support for concatenating multiple snapshot");
        return false;
    }
    /* The first source reads the snapshot from now on, as qemu-img loads it. */
    if (a->snapshot.param && !img_snapshot_param_load(&a->snapshot, c->srcs[0].node))
        return false;
    return !a->has_bitmaps || check_source_bitmaps(a, c);
}

/* Whether the format (or the protocol behind filename) takes creation option key. */
static bool
format_has_option(const char *fmt, const char *filename, const char *key)
{
    struct vimg_opts *o = vimg_opts_new();
    bool has = o && vimg_opts_set(o, key, "x", NULL) == 0 &&
               vimg_create_validate(fmt, filename, o, NULL) == 0;

    vimg_opts_free(o);
    return has;
}

static bool
set_backing_options(const struct convert_args *a, struct vimg_opts *opts)
{
    if (a->base && !format_has_option(a->out_fmt, a->out_name, "backing_file")) {
        tool_error("Backing file not supported for file format '%s'", a->out_fmt);
        return false;
    }
    if (a->base_fmt && !format_has_option(a->out_fmt, a->out_name, "backing_fmt")) {
        tool_error("Backing file format not supported for file format '%s'", a->out_fmt);
        return false;
    }
    if ((a->base && vimg_opts_set(opts, "backing_file", a->base, NULL) < 0) ||
        (a->base_fmt && vimg_opts_set(opts, "backing_fmt", a->base_fmt, NULL) < 0))
        return false;
    if (vimg_opts_has(opts, "backing_file") && !vimg_opts_has(opts, "backing_fmt")) {
        tool_error("Use of backing file requires explicit backing format");
        return false;
    }
    return true;
}

/* The creation options: -o, the total size, -B and -F. NULL after printing the error. */
static struct vimg_opts *
creation_options(const struct convert_args *a, uint64_t total)
{
    struct vimg_error err = { 0 };
    struct vimg_opts *opts = vimg_opts_new();
    char size[32];

    if (!opts)
        return NULL;
    if (a->options && (vimg_opts_parse(opts, a->options, NULL, &err) < 0 ||
                       vimg_create_validate(a->out_fmt, a->out_name, opts, &err) < 0)) {
        tool_error("%s", err.msg);
        goto fail;
    }
    snprintf(size, sizeof(size), "%" PRIu64, total);
    vimg_opts_del(opts, "size");
    if (vimg_opts_set(opts, "size", size, &err) < 0) {
        tool_error("%s", err.msg);
        goto fail;
    }
    if (!set_backing_options(a, opts))
        goto fail;
    return opts;
fail:
    vimg_opts_free(opts);
    return NULL;
}

/* Whether the creation options ask for encryption (qcow2 stores compressed data plain). */
static bool
options_encrypt(struct vimg_opts *opts)
{
    bool is_on = false;

    return vimg_opts_peek(opts, "encrypt.format") ||
           (vimg_opts_get_bool(opts, "encryption", false, &is_on, NULL) == 0 && is_on);
}

/* Creates the target; notes whether it has a backing file (-B or -o backing_file). */
static bool
create_target(const struct convert_args *a, struct convert *c)
{
    struct vimg_error err = { 0 };
    struct vimg_opts *opts;
    int ret;

    if (!vimg_format_exists(a->out_fmt)) {
        tool_error("Unknown file format '%s'", a->out_fmt);
        return false;
    }
    if (!(opts = creation_options(a, c->total)))
        return false;
    c->target_has_backing = vimg_opts_has(opts, "backing_file");
    /* -t is checked only after creation, as qemu-img does. */
    ret = -1;
    if (a->is_compressed && !vimg_format_can_compress(a->out_fmt))
        tool_error("Compression not supported for this file format");
    else if (a->is_compressed && options_encrypt(opts))
        tool_error("Compression and encryption not supported at the same time");
    else if ((ret = vimg_create(a->out_name, a->out_fmt, opts, &err)) < 0)
        tool_error("%s: error while converting %s: %s", a->out_name, a->out_fmt, err.msg);
    vimg_opts_free(opts);
    return ret == 0;
}

/*
 * The creation options that are also open options of the new image (the
 * secret that unlocks an encrypted target), as qemu-img passes them on.
 */
static struct vimg_opts *
target_open_opts(const struct convert_args *a)
{
    static const char *const keys[] = { "key-secret", "encrypt.key-secret", NULL };
    struct vimg_opts *all = vimg_opts_new(), *out = NULL;

    if (!all || !a->options || vimg_opts_parse(all, a->options, NULL, NULL) < 0)
        goto done;
    for (int i = 0; keys[i]; i++) {
        const char *v = vimg_opts_peek(all, keys[i]);
        if (v && (out || (out = vimg_opts_new())))
            vimg_opts_set(out, keys[i], v, NULL);
    }
done:
    vimg_opts_free(all);
    return out;
}

static bool
open_target(const struct convert_args *a, struct convert *c)
{
    struct vimg_opts *extra = a->is_target_image_opts ? NULL : target_open_opts(a);
    struct vimg_error err = { 0 };
    unsigned flags = VIMG_OPEN_RDWR;

    if (!img_cache_flags(a->cache ? a->cache : "unsafe", &flags, false)) {
        vimg_opts_free(extra);
        return false;
    }
    if (extra) {
        if (vimg_open(&c->target, a->out_name, a->out_fmt, extra, flags, &err) < 0) {
            tool_error_err(&err, "Could not open '%s': ", a->out_name);
            c->target = NULL;
        }
        vimg_opts_free(extra);
    } else {
        c->target = img_open(a->is_target_image_opts, a->out_name, a->out_fmt, flags,
                             a->is_quiet);
    }
    if (!c->target)
        return false;
    if (a->is_compressed && !vimg_node_can_compress(c->target)) {
        tool_error("Compression not supported for this file format");
        return false;
    }
    return true;
}

static bool
check_target_size(const struct convert *c)
{
    struct vimg_error err = { 0 };
    int64_t len = vimg_node_length(c->target, &err);

    if (len < 0) {
        tool_error("%s", err.msg);
        return false;
    }
    if ((uint64_t)len < c->total) {
        tool_error("output file is smaller than input file");
        return false;
    }
    return true;
}

/* ---- planning ---- */

static int
classify(const struct convert *c, const struct vimg_block_status *bs)
{
    if (bs->flags & VIMG_BS_ZERO)
        return CHUNK_ZERO;
    if (bs->flags & VIMG_BS_DATA)
        return CHUNK_DATA;
    /* Unallocated everywhere above the base: the target's backing file has it. */
    return c->target_has_backing ? CHUNK_BACKING : CHUNK_DATA;
}

static bool
is_counted(const struct convert *c, enum chunk_status status)
{
    return status == CHUNK_DATA || (c->min_sparse == 0 && status == CHUNK_ZERO);
}

static int
plan_query(struct convert *c, struct planner *p, char **failure)
{
    struct convert_src *src = &c->srcs[p->src_index];
    struct vimg_node *base = c->target_has_backing ? vimg_node_backing(src->node) : NULL;
    struct vimg_block_status bs;
    struct vimg_error err = { 0 };
    int ret;

    ret = vimg_node_block_status_above(src->node, base, p->src_offset,
                                       src->size - p->src_offset, &bs, &err);
    if (ret < 0 && c->is_salvage) {
        /* Copy the sector as data; reading it will tell whether it is readable. */
        pthread_mutex_lock(&c->lock);
        tool_error("warning: error while reading block status at offset %" PRIu64 ": %s",
                   p->src_offset, strerror(err.errnum));
        pthread_mutex_unlock(&c->lock);
        p->status = CHUNK_DATA;
        p->status_end = p->src_offset + (src->size - p->src_offset < SECTOR_SIZE
                                         ? src->size - p->src_offset : SECTOR_SIZE);
        return 0;
    }
    if (ret < 0) {
        if (asprintf(failure, "error while reading block status at offset %" PRIu64 ": %s",
                     p->src_offset, strerror(err.errnum)) < 0)
            *failure = NULL;
        return ret;
    }
    p->status = classify(c, &bs);
    p->status_end = p->src_offset + (bs.bytes ? bs.bytes : src->size - p->src_offset);
    return 0;
}

/* The next chunk: 1, or 0 at the end, or -errno with *failure set. */
static int
plan_next(struct convert *c, struct planner *p, struct chunk *ch, char **failure)
{
    uint64_t n, left, limit;
    int ret;

    while (p->src_index < c->n_srcs && p->src_offset >= c->srcs[p->src_index].size) {
        p->src_index++;
        p->src_offset = 0;
        p->status_end = 0;
    }
    if (p->src_index >= c->n_srcs)
        return 0;
    if (p->status_end <= p->src_offset && (ret = plan_query(c, p, failure)) < 0)
        return ret;
    left = c->srcs[p->src_index].size - p->src_offset;
    ch->status = p->status;
    limit = is_counted(c, ch->status) ? CHUNK_BYTES : ZERO_CHUNK_BYTES;
    n = p->status_end - p->src_offset;
    n = n < limit ? n : limit;
    if (c->is_compressed) {
        /* Compressed clusters are written whole: a short run takes its cluster. */
        if (n < c->cluster) {
            n = c->cluster < left ? c->cluster : left;
            ch->status = CHUNK_DATA;
        } else {
            n -= n % c->cluster;
        }
    }
    ch->src_index = p->src_index;
    ch->src_offset = p->src_offset;
    ch->offset = p->offset;
    ch->bytes = n;
    p->src_offset += n;
    p->offset += n;
    return 1;
}

/* The bytes that progress figures count, by a first pass as qemu-img makes one. */
static int
plan_count(struct convert *c, char **failure)
{
    struct planner p = { 0 };
    struct chunk ch;
    int ret;

    while ((ret = plan_next(c, &p, &ch, failure)) > 0) {
        if (is_counted(c, ch.status))
            c->counted_total += ch.bytes;
    }
    return ret;
}

/* ---- zero detection ---- */

/* Length of the leading run of 512-byte sectors that are all zero or all not (*is_zero). */
static uint64_t
sector_run(const uint8_t *buf, uint64_t len, bool *is_zero)
{
    uint64_t n = len < SECTOR_SIZE ? len : SECTOR_SIZE, pos;

    *is_zero = vimg_buffer_is_zero(buf, n);
    for (pos = n; pos < len; pos += n) {
        n = len - pos < SECTOR_SIZE ? len - pos : SECTOR_SIZE;
        if (vimg_buffer_is_zero(buf + pos, n) != *is_zero)
            break;
    }
    return pos;
}

/*
 * Like sector_run, but a run that stops inside an alignment block ends on its
 * boundary: data grows to it, zeros shrink to it (and a zero run that lies
 * inside the block counts as data), so that holes cover whole blocks.
 */
static uint64_t
aligned_run(const struct convert *c, const uint8_t *buf, uint64_t len, uint64_t offset,
            bool *is_zero)
{
    uint64_t run = sector_run(buf, len, is_zero);
    uint64_t tail = (offset + run) % c->alignment;

    if (run == len || tail == 0)
        return run;
    if (*is_zero && run <= tail)
        *is_zero = false;
    if (*is_zero)
        return run - tail;
    run += c->alignment - tail;
    return run < len ? run : len;
}

/*
 * The first run of buf that is to be written as data (true) or as a hole
 * (false), in *n bytes. Zero runs shorter than -S inside data stay data.
 */
static bool
first_run(const struct convert *c, const uint8_t *buf, uint64_t len, uint64_t offset,
          uint64_t *n)
{
    uint64_t used, checked, run;
    bool is_zero;

    run = aligned_run(c, buf, len, offset, &is_zero);
    if (is_zero) {
        *n = run;
        return false;
    }
    used = checked = run;
    while (checked < len) {
        run = aligned_run(c, buf + checked, len - checked, offset + checked, &is_zero);
        checked += run;
        if (!is_zero)
            used = checked;
        else if (run >= c->min_sparse)
            break;
    }
    *n = used;
    return true;
}

/* ---- workers ---- */

static void
set_failure(struct convert *c, const char *what, uint64_t offset, const struct vimg_error *err)
{
    pthread_mutex_lock(&c->lock);
    if (!c->has_failed) {
        c->has_failed = true;
        if (asprintf(&c->failure, "error while %s at byte %" PRIu64 ": %s", what, offset,
                     err->msg) < 0)
            c->failure = NULL;
    }
    pthread_mutex_unlock(&c->lock);
}

static bool
has_failed(struct convert *c)
{
    bool failed;

    pthread_mutex_lock(&c->lock);
    failed = c->has_failed;
    pthread_mutex_unlock(&c->lock);
    return failed;
}

/* --salvage: reads sector by sector, turning unreadable ones into zeros with a warning. */
static void
read_salvaging(struct convert *c, const struct chunk *ch, uint8_t *buf)
{
    struct vimg_node *src = c->srcs[ch->src_index].node;

    for (uint64_t pos = 0; pos < ch->bytes; pos += SECTOR_SIZE) {
        uint64_t n = ch->bytes - pos < SECTOR_SIZE ? ch->bytes - pos : SECTOR_SIZE;
        struct vimg_error err = { 0 };
        if (vimg_node_pread(src, ch->src_offset + pos, buf + pos, n, 0, &err) < 0) {
            memset(buf + pos, 0, n);
            pthread_mutex_lock(&c->lock);
            tool_error("warning: error while reading offset %" PRIu64 ": %s",
                       ch->src_offset + pos, err.msg);
            pthread_mutex_unlock(&c->lock);
        }
    }
}

static int
job_read(struct convert_job *job, struct vimg_error *err)
{
    struct convert *c = job->c;

    if (job->ch.status != CHUNK_DATA) {
        memset(job->buf, 0, job->ch.bytes);
        return 0;
    }
    if (vimg_node_pread(c->srcs[job->ch.src_index].node, job->ch.src_offset, job->buf,
                        job->ch.bytes, 0, err) == 0)
        return 0;
    if (c->is_salvage) {
        read_salvaging(c, &job->ch, job->buf);
        return 0;
    }
    set_failure(c, "reading", job->ch.offset, err);
    return -1;
}

static int
write_zeroes(struct convert *c, uint64_t offset, uint64_t bytes, struct vimg_error *err)
{
    if (c->has_zero_init)
        return 0;
    return vimg_node_pwrite_zeroes(c->target, offset, bytes, VIMG_REQ_MAY_UNMAP, err);
}

/* The clusters from pos on that are not all zeros, as bytes: at most max, at least one cluster. */
static uint64_t
data_cluster_run(const struct convert *c, const struct chunk *ch, const uint8_t *buf,
                 uint64_t pos, uint64_t max)
{
    uint64_t end = pos + (ch->bytes - pos < c->cluster ? ch->bytes - pos : c->cluster);

    while (end < ch->bytes && end - pos < max) {
        uint64_t n = ch->bytes - end < c->cluster ? ch->bytes - end : c->cluster;

        if (vimg_buffer_is_zero(buf + end, n))
            break;
        end += n;
    }
    return end - pos;
}

/*
 * Zero clusters are written as zeros, the others compressed: a qcow2
 * target's by runs in one request (its compressed writes compress a
 * request's clusters and then store them one after the other), others' one
 * cluster at a time.
 */
static int
write_compressed(struct convert *c, const struct chunk *ch, const uint8_t *buf,
                 struct vimg_error *err)
{
    uint64_t max = c->is_compress_unordered ? ch->bytes : c->cluster, n;
    int ret;

    for (uint64_t pos = 0; pos < ch->bytes; pos += n) {
        n = ch->bytes - pos < c->cluster ? ch->bytes - pos : c->cluster;
        if (vimg_buffer_is_zero(buf + pos, n)) {
            ret = write_zeroes(c, ch->offset + pos, n, err);
        } else {
            n = data_cluster_run(c, ch, buf, pos, max);
            ret = vimg_node_pwrite_compressed(c->target, ch->offset + pos, buf + pos, n, err);
        }
        if (ret < 0)
            return ret;
    }
    return 0;
}

/* Writes a data buffer, leaving holes for zero runs of -S bytes or more. */
static int
write_buffer(struct convert *c, const struct chunk *ch, const uint8_t *buf,
             struct vimg_error *err)
{
    uint64_t pos = 0, n;
    int ret;

    if (c->is_compressed)
        return write_compressed(c, ch, buf, err);
    while (pos < ch->bytes) {
        bool is_data = true;
        n = ch->bytes - pos;
        if (c->min_sparse)
            is_data = first_run(c, buf + pos, n, ch->offset + pos, &n);
        ret = is_data ? vimg_node_pwrite(c->target, ch->offset + pos, buf + pos, n, 0, err)
                      : write_zeroes(c, ch->offset + pos, n, err);
        if (ret < 0)
            return ret;
        pos += n;
    }
    return 0;
}

/* -C: copies without reading, or reads and writes where the files cannot share a copy. */
static int
copy_chunk(struct convert_job *job, struct vimg_error *err)
{
    struct convert *c = job->c;
    const struct chunk *ch = &job->ch;
    int ret;

    ret = vimg_node_copy_range(c->srcs[ch->src_index].node, ch->src_offset, c->target,
                               ch->offset, ch->bytes, err);
    if (ret != -EXDEV && ret != -ENOTSUP && ret != -ENOSYS)
        return ret;
    vimg_error_clear(err);
    if (job_read(job, err) < 0)
        return 1;
    return write_buffer(c, ch, job->buf, err);
}

/* Returns 0, or non-zero after recording the failure. */
static int
job_write(struct convert_job *job)
{
    struct convert *c = job->c;
    const struct chunk *ch = &job->ch;
    struct vimg_error err = { 0 };
    int ret;

    if (ch->status == CHUNK_ZERO && c->min_sparse)
        ret = write_zeroes(c, ch->offset, ch->bytes, &err);
    else if (c->is_copy_range && ch->status == CHUNK_DATA)
        ret = copy_chunk(job, &err);
    else
        ret = write_buffer(c, ch, job->buf, &err);
    if (ret < 0)
        set_failure(c, "writing", ch->offset, &err);
    return ret;
}

static void
job_wait_turn(struct convert_job *job)
{
    struct convert *c = job->c;

    pthread_mutex_lock(&c->lock);
    while (c->next_seq != job->seq)
        pthread_cond_wait(&c->turn, &c->lock);
    pthread_mutex_unlock(&c->lock);
}

/* is_done: the chunk is in the target, so it counts for progress. */
static void
job_finish(struct convert_job *job, bool is_done)
{
    struct convert *c = job->c;

    pthread_mutex_lock(&c->lock);
    if (is_counted(c, job->ch.status) && is_done) {
        c->counted_done += job->ch.bytes;
        tool_meter_set(&c->meter, (float)(100.0 * (double)c->counted_done /
                                          (double)c->counted_total));
    }
    if (!c->is_out_of_order) {
        c->next_seq++;
        pthread_cond_broadcast(&c->turn);
    }
    if (job->buf && c->n_free_bufs < c->cap_free_bufs)
        c->free_bufs[c->n_free_bufs++] = job->buf;
    else
        free(job->buf);
    pthread_mutex_unlock(&c->lock);
    free(job);
}

static void
job_run(void *arg)
{
    struct convert_job *job = arg;
    struct convert *c = job->c;
    bool needs_read = job->buf && !(c->is_copy_range && job->ch.status == CHUNK_DATA);
    struct vimg_error err = { 0 };
    int ret = 0;

    if (has_failed(c))
        ret = -1;
    if (ret == 0 && needs_read)
        ret = job_read(job, &err);
    if (!c->is_out_of_order && !c->is_compress_unordered)
        job_wait_turn(job);
    /* Like qemu-img, a chunk that was read is written even when another one failed. */
    if (ret == 0)
        ret = job_write(job);
    job_finish(job, ret == 0);
}

/* ---- the copy ---- */

static void *
take_buffer(struct convert *c)
{
    void *buf = NULL;

    pthread_mutex_lock(&c->lock);
    if (c->n_free_bufs)
        buf = c->free_bufs[--c->n_free_bufs];
    pthread_mutex_unlock(&c->lock);
    if (!buf && posix_memalign(&buf, BUF_ALIGN, CHUNK_BYTES > c->cluster ? CHUNK_BYTES
                                                                         : c->cluster) != 0)
        return NULL;
    return buf;
}

static bool
needs_buffer(const struct convert *c, const struct chunk *ch)
{
    return ch->status == CHUNK_DATA || (c->min_sparse == 0 && ch->status == CHUNK_ZERO);
}

/* Sleeps as long as -r needs so that `done` bytes do not come before their time. */
static void
rate_limit_wait(int64_t rate, const struct timespec *start, uint64_t done)
{
    struct timespec now, until;
    double due, elapsed;

    if (rate <= 0)
        return;
    clock_gettime(CLOCK_MONOTONIC, &now);
    due = (double)done / (double)rate;
    elapsed = (double)(now.tv_sec - start->tv_sec) + (double)(now.tv_nsec - start->tv_nsec) / 1e9;
    if (due <= elapsed)
        return;
    until.tv_sec = (time_t)(due - elapsed);
    until.tv_nsec = (long)((due - elapsed - (double)until.tv_sec) * 1e9);
    nanosleep(&until, NULL);
}

static int
submit_chunk(struct convert *c, struct vimg_pool *pool, const struct chunk *ch, uint64_t seq)
{
    struct convert_job *job = calloc(1, sizeof(*job));
    int ret;

    if (!job)
        return -ENOMEM;
    job->c = c;
    job->ch = *ch;
    job->seq = seq;
    if (needs_buffer(c, ch) && !(job->buf = take_buffer(c))) {
        free(job);
        return -ENOMEM;
    }
    if ((ret = vimg_pool_submit(pool, job_run, job)) < 0) {
        free(job->buf);
        free(job);
    }
    return ret;
}

/* Feeds the pool chunk by chunk; returns 0 or -errno with *failure set when planning failed. */
static int
feed_pool(struct convert *c, struct vimg_pool *pool, int64_t rate, char **failure)
{
    struct planner p = { 0 };
    struct timespec start;
    struct chunk ch;
    uint64_t seq = 0, sent = 0;
    int ret = 0;

    clock_gettime(CLOCK_MONOTONIC, &start);
    while (!has_failed(c) && (ret = plan_next(c, &p, &ch, failure)) > 0) {
        if (ch.status == CHUNK_BACKING ||
            (ch.status == CHUNK_ZERO && c->has_zero_init && c->min_sparse))
            continue;
        if (needs_buffer(c, &ch)) {
            rate_limit_wait(rate, &start, sent);
            sent += ch.bytes;
        }
        if ((ret = submit_chunk(c, pool, &ch, seq++)) < 0) {
            if (asprintf(failure, "%s", strerror(-ret)) < 0)
                *failure = NULL;
            return ret;
        }
    }
    return has_failed(c) ? 0 : ret;
}

/*
 * -m bounds the requests in flight. Calls block, so each needs a thread, but
 * beyond twice the CPUs more threads only contend for the page cache of the
 * same files (the bench measures 20% more CPU time with 8 than with 4 on two
 * CPUs), so the pool has no more than that.
 */
static unsigned
worker_threads(unsigned n_workers)
{
    long n_cpus = sysconf(_SC_NPROCESSORS_ONLN);
    unsigned limit = n_cpus > 1 ? 2 * (unsigned)n_cpus : 2;

    return n_workers < limit ? n_workers : limit;
}

static int
run_copy(struct convert *c, unsigned n_workers, int64_t rate)
{
    struct vimg_error err = { 0 };
    struct vimg_pool *pool = NULL;
    char *failure = NULL;
    int ret;

    /* qemu-img makes this pass with or without -p: salvage warnings come from both. */
    if (plan_count(c, &failure) < 0) {
        tool_error("%s", failure ? failure : strerror(ENOMEM));
        free(failure);
        return 1;
    }
    n_workers = worker_threads(n_workers);
    c->cap_free_bufs = 2 * (size_t)n_workers + 1;
    if ((c->free_bufs = calloc(c->cap_free_bufs, sizeof(*c->free_bufs))))
        pool = vimg_pool_new(n_workers, n_workers, &err);
    if (pool) {
        ret = feed_pool(c, pool, rate, &failure);
        vimg_pool_wait(pool);
        vimg_pool_free(pool);
        if (ret == 0 && !c->has_failed && (ret = vimg_node_flush(c->target, &err)) < 0 &&
            asprintf(&failure, "error while flushing: %s", err.msg) < 0)
            failure = NULL;
    } else {
        ret = -ENOMEM;
        failure = strdup(err.errnum ? err.msg : strerror(ENOMEM));
    }
    tool_meter_set(&c->meter, 100);
    if (c->failure || failure)
        tool_error("%s", c->failure ? c->failure : failure);
    free(failure);
    return ret < 0 || c->has_failed ? 1 : 0;
}

/* Sets up the copy from the arguments and the opened images. Returns -1 to go on. */
static int
prepare_copy(const struct convert_args *a, struct convert *c)
{
    uint64_t sparse_pow2 = SECTOR_SIZE;
    c->min_sparse = (uint64_t)a->min_sparse;
    while (sparse_pow2 * 2 <= c->min_sparse)
        sparse_pow2 *= 2;
    c->alignment = sparse_pow2;
    /* As qemu-img: a target that takes only compressed clusters is written so. */
    c->is_compressed = a->is_compressed || vimg_node_needs_compressed_writes(c->target);
    c->is_copy_range = a->is_copy_range;
    c->is_out_of_order = a->is_out_of_order;
    c->is_salvage = a->is_salvage;
    /* With -n, only -B says that the target has a backing file, as in qemu-img. */
    c->target_has_backing = c->target_has_backing || a->base;
    c->has_zero_init = a->skip_create ? a->is_target_zero
                                      : vimg_node_has_zero_init(c->target);
    c->cluster = vimg_node_cluster_size(c->target);
    /*
     * qcow2 places compressed clusters wherever they come (QEMU's compresses
     * a request's clusters in parallel and stores them as they finish), so
     * its chunks need not wait for their turn: the workers compress theirs
     * at once instead of one chunk at a time. Others keep the order (a
     * streamOptimized VMDK is written front to back).
     */
    c->is_compress_unordered = c->is_compressed &&
                               strcmp(vimg_node_format(c->target), "qcow2") == 0;
    if (c->is_compressed && (c->cluster == 0 || c->cluster > CHUNK_BYTES)) {
        tool_error("invalid cluster size");
        return 1;
    }
    if (a->skip_create && a->is_target_zero && c->target_has_backing) {
        /* qemu-img 7.2 reports this and then exits with 0, having copied nothing. */
        tool_error("Cannot use --target-is-zero when the destination image has a backing "
                   "file");
        tool_meter_set(&c->meter, 100);
        return 0;
    }
    return a->skip_create && !check_target_size(c) ? 1 : -1;
}

/* Everything after the source cache mode was found valid; progress has started. */
/* --bitmaps: the target must be able to store them (checked before the copy). */
static bool
check_target_bitmaps(struct convert *c)
{
    struct vimg_error err = { 0 };
    struct vimg_bitmap_info *list;
    size_t n;

    if (vimg_image_bitmap_list(c->target, &list, &n, &err) < 0) {
        tool_error("%s", err.msg);
        return false;
    }
    vimg_bitmap_list_free(list, n);
    return true;
}

/* Creates bitmap bm in the target and fills it from the source's; 0 or the exit code. */
static int
copy_bitmap(struct convert *c, const struct vimg_bitmap_info *bm)
{
    struct vimg_error err = { 0 };
    struct vimg_bitmap_op op = { .action = VIMG_BITMAP_ADD, .name = bm->name,
                                 .granularity = bm->granularity };

    if (vimg_image_bitmap(c->target, &op, &err) < 0 ||
        (!bm->is_enabled && (op.action = VIMG_BITMAP_DISABLE,
                             vimg_image_bitmap(c->target, &op, &err) < 0))) {
        tool_error("Failed to create bitmap %s: %s", bm->name, err.msg);
        return 1;
    }
    op = (struct vimg_bitmap_op){ .action = VIMG_BITMAP_MERGE, .name = bm->name,
                                  .source = bm->name, .source_node = c->srcs[0].node };
    if (vimg_image_bitmap(c->target, &op, &err) < 0) {
        tool_error("Failed to populate bitmap %s: %s", bm->name, err.msg);
        op = (struct vimg_bitmap_op){ .action = VIMG_BITMAP_REMOVE, .name = bm->name };
        vimg_image_bitmap(c->target, &op, NULL);
        return 1;
    }
    return 0;
}

/*
 * What would stop a bitmap from being copied, found before any is: qemu-img
 * meets the source's bitmaps last first, and the first failure leaves the
 * target without any of them. 0 or the exit code.
 */
static int
check_bitmaps_copyable(const struct convert_args *a, struct convert *c)
{
    struct vimg_error err = { 0 };
    struct vimg_bitmap_info *have;
    int64_t size = vimg_node_length(c->target, &err);
    size_t n, i = c->n_bitmaps;
    int ret = 0;

    if (size < 0 || vimg_image_bitmap_list(c->target, &have, &n, &err) < 0) {
        tool_error("%s", err.msg);
        return 1;
    }
    while (i-- > 0 && ret == 0) {
        const char *name = c->bitmaps[i].name;
        if (c->bitmaps[i].is_in_use && a->skip_broken_bitmaps)
            continue;
        for (size_t j = 0; j < n && ret == 0; j++)
            if (strcmp(have[j].name, name) == 0) {
                tool_error("Failed to create bitmap %s: Bitmap already exists: %s", name, name);
                ret = 1;
            }
        if (ret == 0 && (uint64_t)size != c->srcs[0].size) {
            tool_error("Failed to populate bitmap %s: Bitmaps are of different sizes "
                       "(destination size is %" PRId64 ", source size is %" PRIu64 ") and "
                       "can't be merged", name, size, c->srcs[0].size);
            ret = 1;
        }
    }
    vimg_bitmap_list_free(have, n);
    return ret;
}

/*
 * --bitmaps, after the copy: each consistent bitmap of the source, with its
 * name, granularity, state and bits, in the source's order. On failure the
 * ones copied so far are removed again: qemu-img stores none of them then.
 */
static int
copy_bitmaps(const struct convert_args *a, struct convert *c)
{
    size_t i;

    if (check_bitmaps_copyable(a, c) != 0)
        return 1;
    for (i = 0; i < c->n_bitmaps; i++) {
        if (c->bitmaps[i].is_in_use && a->skip_broken_bitmaps) {
            tool_error("warning: Skipping inconsistent bitmap '%s'", c->bitmaps[i].name);
            continue;
        }
        if (copy_bitmap(c, &c->bitmaps[i]) != 0)
            break;
    }
    if (i == c->n_bitmaps)
        return 0;
    while (i-- > 0) {
        struct vimg_bitmap_op op = { .action = VIMG_BITMAP_REMOVE, .name = c->bitmaps[i].name };
        if (!c->bitmaps[i].is_in_use)
            vimg_image_bitmap(c->target, &op, NULL);
    }
    return 1;
}

static int
convert_images(const struct convert_args *a, unsigned src_flags, struct convert *c)
{
    int ret;

    if (!open_sources(a, src_flags, c) || !check_source_features(a, c))
        return 1;
    if (!a->skip_create && !create_target(a, c))
        return 1;
    if (!open_target(a, c) || (a->has_bitmaps && !check_target_bitmaps(c)))
        return 1;
    if ((ret = prepare_copy(a, c)) >= 0)
        return ret;
    if ((ret = run_copy(c, a->n_workers, a->rate_limit)) != 0 || !a->has_bitmaps)
        return ret;
    return copy_bitmaps(a, c);
}

static int
convert(const struct convert_args *a)
{
    unsigned src_flags = a->is_force_share ? VIMG_OPEN_FORCE_SHARE : VIMG_OPEN_NO_SHARE;
    struct convert c = { 0 };
    int ret;

    if (a->src_cache && !img_cache_flags(a->src_cache, &src_flags, true))
        return 1;
    pthread_mutex_init(&c.lock, NULL);
    pthread_cond_init(&c.turn, NULL);
    tool_meter_init(&c.meter, a->is_progress && !a->is_quiet, 1.0f);
    tool_meter_set(&c.meter, 0);
    ret = convert_images(a, src_flags, &c);
    tool_meter_end(&c.meter);
    vimg_close(c.target);
    for (int i = 0; i < c.n_srcs; i++)
        vimg_close(c.srcs[i].node);
    for (size_t i = 0; i < c.n_free_bufs; i++)
        free(c.free_bufs[i]);
    free(c.free_bufs);
    free(c.srcs);
    vimg_bitmap_list_free(c.bitmaps, c.n_bitmaps);
    free(c.failure);
    pthread_cond_destroy(&c.turn);
    pthread_mutex_destroy(&c.lock);
    return ret;
}

int
cmd_convert(int argc, char **argv)
{
    struct convert_args a = { .min_sparse = 4096, .n_workers = 8 };
    int ret;

    if ((ret = parse_args(&a, argc, argv)) < 0 && (ret = check_args(&a)) < 0)
        ret = convert(&a);
    free(a.options);
    img_snapshot_param_free(&a.snapshot);
    return ret;
}
