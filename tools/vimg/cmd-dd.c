/*
 * vimg dd: qemu-img dd. Copies an input image into a new output image in
 * bs-byte blocks, with dd(1)-style operands (bs= count= skip= if= of=).
 *
 * qemu-img's arithmetic is kept as it is, since scripts see its results:
 * count limits the input first and skip is taken off what remains, so the
 * output holds min(size, count * bs) - skip * bs bytes read from skip * bs
 * on; a skip past that end prints a warning, creates an empty output and
 * still exits with 0. The output is created, so --image-opts applies to the
 * input only.
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

struct dd_args {
    const char *in_name;
    const char *out_name;
    const char *fmt;
    const char *out_fmt;
    int64_t bs;
    int64_t count;
    int64_t skip;
    bool has_count;
    bool has_skip;
    bool is_image_opts;
    bool is_force_share;
};

/* bs= takes 1..INT_MAX, as qemu-img's block buffer is sized by an int. */
static bool
parse_bs(struct dd_args *a, const char *value)
{
    uint64_t n;
    int ret = vimg_parse_size(value, &n);

    if (ret == 0 && n >= 1 && n <= INT_MAX) {
        a->bs = (int64_t)n;
        return true;
    }
    if (ret == -EINVAL) {
        tool_error("Invalid bs specified. You may use k, M, G, T, P or E suffixes for");
        tool_error("kilobytes, megabytes, gigabytes, terabytes, petabytes and exabytes.");
    } else {
        tool_error("Invalid bs specified. Must be between 1 and %d.", INT_MAX);
    }
    return false;
}

/* One "key=value" operand; false after printing the error. */
static bool
parse_operand(struct dd_args *a, const char *arg)
{
    const char *eq = strchr(arg, '=');
    size_t len = eq ? (size_t)(eq - arg) : 0;

    if (!eq) {
        tool_error("unrecognized operand %s", arg);
        return false;
    }
    if (len == 2 && strncmp(arg, "bs", 2) == 0)
        return parse_bs(a, eq + 1);
    if (len == 5 && strncmp(arg, "count", 5) == 0) {
        a->has_count = true;
        return (a->count = tool_cvtnum("count", eq + 1)) >= 0;
    }
    if (len == 4 && strncmp(arg, "skip", 4) == 0) {
        a->has_skip = true;
        return (a->skip = tool_cvtnum("skip", eq + 1)) >= 0;
    }
    if (len == 2 && strncmp(arg, "if", 2) == 0) {
        a->in_name = eq + 1;
        return true;
    }
    if (len == 2 && strncmp(arg, "of", 2) == 0) {
        a->out_name = eq + 1;
        return true;
    }
    tool_error("unrecognized operand %.*s", (int)len, arg);
    return false;
}

/* Returns -1 to go on, else the exit code. */
static int
parse_args(struct dd_args *a, int argc, char **argv)
{
    static const struct option long_opts[] = {
        { "help", no_argument, NULL, 'h' },
        { "image-opts", no_argument, NULL, OPT_IMAGE_OPTS },
        { "object", required_argument, NULL, OPT_OBJECT },
        { "force-share", no_argument, NULL, 'U' },
        { NULL, 0, NULL, 0 },
    };
    int c;

    opterr = 0;
    while ((c = getopt_long(argc, argv, ":hf:O:U", long_opts, NULL)) != -1) {
        switch (c) {
        case 'f': a->fmt = optarg; break;
        case 'O': a->out_fmt = optarg; break;
        case 'U': a->is_force_share = true; break;
        case OPT_IMAGE_OPTS: a->is_image_opts = true; break;
        case OPT_OBJECT:
            if (!img_add_object(optarg))
                return 1;
            break;
        case 'h':
            img_print_help();
            return 0;
        case ':': return img_usage_error("missing argument for option '%s'", argv[optind - 1]);
        default: return img_bad_option(argv);
        }
    }
    for (int i = optind; i < argc; i++) {
        if (!parse_operand(a, argv[i]))
            return 1;
    }
    if (!a->in_name || !a->out_name) {
        tool_error("Must specify both input and output files");
        return 1;
    }
    return -1;
}

static bool
create_output(const struct dd_args *a, uint64_t size)
{
    struct vimg_error err = { 0 };
    struct vimg_opts *opts;
    char buf[32];
    int ret;

    if (!vimg_format_exists(a->out_fmt)) {
        tool_error("Unknown file format");
        return false;
    }
    if (!(opts = vimg_opts_new()))
        return false;
    snprintf(buf, sizeof(buf), "%" PRIu64, size);
    ret = vimg_opts_set(opts, "size", buf, &err);
    if (ret == 0)
        ret = vimg_create(a->out_name, a->out_fmt, opts, &err);
    if (ret < 0)
        tool_error("%s: error while creating output image: %s", a->out_name, err.msg);
    vimg_opts_free(opts);
    return ret == 0;
}

static int
copy_blocks(struct vimg_node *in, struct vimg_node *out, uint64_t in_pos, uint64_t end,
            uint64_t bs)
{
    struct vimg_error err = { 0 };
    uint64_t out_pos = 0;
    uint8_t *buf = malloc(bs);

    if (!buf) {
        tool_error("Out of memory");
        return 1;
    }
    while (in_pos < end) {
        uint64_t n = end - in_pos < bs ? end - in_pos : bs;
        if (vimg_node_pread(in, in_pos, buf, n, 0, &err) < 0) {
            tool_error("error while reading from input image file: %s", err.msg);
            break;
        }
        if (vimg_node_pwrite(out, out_pos, buf, n, 0, &err) < 0) {
            tool_error("error while writing to output image file: %s", err.msg);
            break;
        }
        in_pos += n;
        out_pos += n;
    }
    free(buf);
    return in_pos < end ? 1 : 0;
}

static int
run_dd(const struct dd_args *a, struct vimg_node *in)
{
    struct vimg_error err = { 0 };
    struct vimg_node *out;
    uint64_t bs = (uint64_t)a->bs, skip_bytes = 0;
    bool can_skip = true;
    int64_t size = vimg_node_length(in, &err);
    int ret;

    if (size < 0) {
        tool_error("Failed to get size for '%s'", a->in_name);
        return 1;
    }
    if (a->has_count && (uint64_t)a->count <= INT64_MAX / bs && (uint64_t)size > a->count * bs)
        size = (int64_t)(a->count * bs);
    if (a->has_skip) {
        can_skip = (uint64_t)a->skip <= INT64_MAX / bs && (uint64_t)size >= a->skip * bs;
        skip_bytes = can_skip ? a->skip * bs : (uint64_t)size;
    }
    if (!create_output(a, can_skip ? (uint64_t)size - skip_bytes : 0))
        return 1;
    out = img_open(false, a->out_name, a->out_fmt, VIMG_OPEN_RDWR, false);
    if (!out)
        return 1;
    if (!can_skip)
        tool_error("%s: cannot skip to specified offset", a->in_name);
    ret = copy_blocks(in, out, skip_bytes, (uint64_t)size, bs);
    vimg_close(out);
    return ret;
}

int
cmd_dd(int argc, char **argv)
{
    struct dd_args a = { .bs = 512, .out_fmt = "raw" };
    struct vimg_node *in;
    int ret;

    if ((ret = parse_args(&a, argc, argv)) >= 0)
        return ret;
    in = img_open(a.is_image_opts, a.in_name, a.fmt,
                  a.is_force_share ? VIMG_OPEN_FORCE_SHARE : 0, false);
    if (!in)
        return 1;
    ret = run_dd(&a, in);
    vimg_close(in);
    return ret;
}
