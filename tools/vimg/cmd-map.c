/*
 * vimg map: qemu-img map. Walks the image with block status through the
 * backing chain, merges adjacent runs that look alike and prints them as the
 * human table (data runs only) or as JSON lines, in qemu-img 7.2's words.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "vimg.h"

enum { OPT_OBJECT = 256, OPT_IMAGE_OPTS, OPT_OUTPUT, OPT_START_OFFSET, OPT_MAX_LENGTH };

/* The flags a map entry shows; runs merge only when these agree. */
#define MAP_FLAGS (VIMG_BS_DATA | VIMG_BS_ZERO | VIMG_BS_ALLOCATED | VIMG_BS_OFFSET_VALID)

struct map_entry {
    uint64_t start;
    uint64_t length;
    uint64_t offset;            /* host offset, with VIMG_BS_OFFSET_VALID */
    unsigned flags;             /* MAP_FLAGS bits */
    int depth;
    const char *filename;       /* file holding the data, with VIMG_BS_OFFSET_VALID */
};

struct map_args {
    const char *fmt;
    const char *filename;
    bool is_image_opts;
    bool is_json;
    unsigned flags;
    uint64_t start;
    int64_t max_length;         /* -1 = to the end */
};

static bool
entry_is_mergeable(const struct map_entry *curr, const struct map_entry *next)
{
    if (curr->length == 0 || curr->flags != next->flags || curr->depth != next->depth)
        return false;
    if (!(curr->flags & VIMG_BS_OFFSET_VALID))
        return true;
    return curr->offset + curr->length == next->offset &&
           strcmp(curr->filename, next->filename) == 0;
}

static const char *
json_bool(unsigned flags, unsigned bit)
{
    return (flags & bit) ? "true" : "false";
}

/*
 * Prints one entry; has_next: more follow, so JSON ends it with the ",\n"
 * separator at once (qemu-img's stdout keeps it when a later lookup fails).
 * -1 after printing an error.
 */
static int
dump_entry(const struct map_entry *e, bool is_json, bool has_next)
{
    bool has_offset = e->flags & VIMG_BS_OFFSET_VALID;

    if (is_json) {
        printf("{ \"start\": %" PRIu64 ", \"length\": %" PRIu64 ", \"depth\": %d, "
               "\"present\": %s, \"zero\": %s, \"data\": %s",
               e->start, e->length, e->depth, json_bool(e->flags, VIMG_BS_ALLOCATED),
               json_bool(e->flags, VIMG_BS_ZERO), json_bool(e->flags, VIMG_BS_DATA));
        if (has_offset)
            printf(", \"offset\": %" PRIu64, e->offset);
        printf("}%s", has_next ? ",\n" : "");
        return 0;
    }
    if ((e->flags & VIMG_BS_DATA) && !has_offset) {
        tool_error("File contains external, encrypted or compressed clusters.");
        return -1;
    }
    if ((e->flags & VIMG_BS_DATA) && !(e->flags & VIMG_BS_ZERO))
        printf("%#-16" PRIx64 "%#-16" PRIx64 "%#-16" PRIx64 "%s\n", e->start, e->length,
               e->offset, e->filename);
    return 0;
}

static int
read_entry(struct vimg_node *node, uint64_t offset, uint64_t bytes, struct map_entry *e)
{
    struct vimg_error err = { 0 };
    struct vimg_block_status bs;

    if (vimg_node_block_status_above(node, NULL, offset, bytes, &bs, &err) < 0) {
        tool_error("Could not read file metadata: %s", strerror(err.errnum ? err.errnum : EIO));
        return -1;
    }
    e->start = offset;
    e->length = bs.bytes < bytes ? bs.bytes : bytes;
    e->flags = bs.flags & MAP_FLAGS;
    e->depth = bs.depth;
    e->offset = bs.offset;
    e->filename = NULL;
    if (!bs.file)
        e->flags &= ~VIMG_BS_OFFSET_VALID;
    if (e->flags & VIMG_BS_OFFSET_VALID)
        e->filename = vimg_node_filename(bs.file);
    else
        e->offset = 0;
    return 0;
}

/* Walks [start, end) and prints the merged entries; an empty range prints one empty entry. */
static int
map_range(struct vimg_node *node, uint64_t start, uint64_t end, bool is_json)
{
    struct map_entry curr = { .start = start }, next;
    uint64_t offset = start;

    while (offset < end) {
        if (read_entry(node, offset, end - offset, &next) < 0)
            return -1;
        if (next.length == 0) {
            tool_error("Could not read file metadata: %s", strerror(EIO));
            return -1;
        }
        offset += next.length;
        if (entry_is_mergeable(&curr, &next)) {
            curr.length += next.length;
            continue;
        }
        if (curr.length > 0 && dump_entry(&curr, is_json, true) < 0)
            return -1;
        curr = next;
    }
    if (dump_entry(&curr, is_json, false) < 0)
        return -1;
    if (is_json)
        printf("]\n");
    return 0;
}

static int
run_map(const struct map_args *a)
{
    struct vimg_error err = { 0 };
    struct vimg_node *node;
    uint64_t end;
    int64_t len;
    int ret = 1;

    node = img_open(a->is_image_opts, a->filename, a->fmt, a->flags, false);
    if (!node)
        return 1;
    len = vimg_node_length(node, &err);
    if (len < 0) {
        tool_error("%s", err.msg);
        goto out;
    }
    end = (uint64_t)len;
    if (a->max_length >= 0 && a->start + (uint64_t)a->max_length < end)
        end = a->start + (uint64_t)a->max_length;
    /* The JSON list opens before the first lookup, as in qemu-img. */
    if (a->is_json)
        printf("[");
    else
        printf("%-16s%-16s%-16s%s\n", "Offset", "Length", "Mapped to", "File");
    if (map_range(node, a->start, end, a->is_json) == 0)
        ret = 0;
out:
    vimg_close(node);
    return ret;
}

/* Returns 0 to go on, 1 after an error, 2 for --help. */
static int
parse_map_args(int argc, char **argv, struct map_args *a)
{
    static const struct option long_opts[] = {
        { "help", no_argument, NULL, 'h' },
        { "format", required_argument, NULL, 'f' },
        { "output", required_argument, NULL, OPT_OUTPUT },
        { "object", required_argument, NULL, OPT_OBJECT },
        { "image-opts", no_argument, NULL, OPT_IMAGE_OPTS },
        { "force-share", no_argument, NULL, 'U' },
        { "start-offset", required_argument, NULL, OPT_START_OFFSET },
        { "max-length", required_argument, NULL, OPT_MAX_LENGTH },
        { NULL, 0, NULL, 0 },
    };
    int c, is_json;
    int64_t n;

    opterr = 0;
    while ((c = getopt_long(argc, argv, ":f:hU", long_opts, NULL)) != -1) {
        switch (c) {
        case 'f': a->fmt = optarg; break;
        case 'U': a->flags |= VIMG_OPEN_FORCE_SHARE; break;
        case 'h': return 2;
        case OPT_OUTPUT:
            if ((is_json = img_output_format(optarg)) < 0)
                return 1;
            a->is_json = is_json;
            break;
        case OPT_IMAGE_OPTS: a->is_image_opts = true; break;
        case OPT_OBJECT:
            if (!img_add_object(optarg))
                return 1;
            break;
        case OPT_START_OFFSET:
            if ((n = tool_cvtnum("start offset", optarg)) < 0)
                return 1;
            a->start = (uint64_t)n;
            break;
        case OPT_MAX_LENGTH:
            if ((a->max_length = tool_cvtnum("max length", optarg)) < 0)
                return 1;
            break;
        case ':':
            return img_usage_error("missing argument for option '%s'", argv[optind - 1]);
        default:
            return img_bad_option(argv);
        }
    }
    if (optind != argc - 1)
        return img_usage_error("Expecting one image file name");
    a->filename = argv[optind];
    return 0;
}

int
cmd_map(int argc, char **argv)
{
    struct map_args a = { .max_length = -1 };
    int ret = parse_map_args(argc, argv, &a);

    if (ret == 2) {
        img_print_help();
        return 0;
    }
    if (ret != 0)
        return ret;
    return run_map(&a);
}
