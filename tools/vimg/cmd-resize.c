/*
 * vimg resize: qemu-img resize. Sets the virtual size to SIZE, or grows or
 * shrinks it by +SIZE/-SIZE; shrinking needs --shrink, preallocation only
 * applies to growing.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "vimg.h"

enum { OPT_OBJECT = 256, OPT_IMAGE_OPTS, OPT_PREALLOCATION, OPT_SHRINK };

struct resize_args {
    const char *fmt;
    const char *filename;
    const char *prealloc;       /* a valid mode name; "off" by default */
    bool is_image_opts;
    bool is_quiet;
    bool is_shrink;
    int sign;                   /* +1 grow by, -1 shrink by, 0 absolute */
    uint64_t size;
};

static bool
prealloc_is_valid(const char *mode)
{
    static const char *const modes[] = { "off", "metadata", "falloc", "full", NULL };

    for (int i = 0; modes[i]; i++)
        if (strcmp(mode, modes[i]) == 0)
            return true;
    tool_error("Invalid preallocation mode '%s'", mode);
    return false;
}

/* "[+|-]SIZE" with the messages of QEMU's size option parser. */
static bool
parse_size_arg(const char *arg, struct resize_args *a)
{
    int ret;

    a->sign = arg[0] == '+' ? 1 : arg[0] == '-' ? -1 : 0;
    if (a->sign)
        arg++;
    ret = vimg_parse_size(arg, &a->size);
    if (ret == -ERANGE) {
        tool_error("Value '%s' is out of range for parameter 'size'", arg);
        return false;
    }
    if (ret < 0) {
        tool_error("Parameter 'size' expects a non-negative number below 2^64\n"
                   "Optional suffix k, M, G, T, P or E means kilo-, mega-, giga-, tera-, peta-\n"
                   "and exabytes, respectively.");
        return false;
    }
    return true;
}

static int
parse_resize_opt(int c, char **argv, struct resize_args *a)
{
    switch (c) {
    case 'f': a->fmt = optarg; return 0;
    case 'q': a->is_quiet = true; return 0;
    case 'h': return 2;
    case OPT_OBJECT: return img_add_object(optarg) ? 0 : 1;
    case OPT_IMAGE_OPTS: a->is_image_opts = true; return 0;
    case OPT_SHRINK: a->is_shrink = true; return 0;
    case OPT_PREALLOCATION:
        a->prealloc = optarg;
        return prealloc_is_valid(optarg) ? 0 : 1;
    case ':':
        return img_usage_error("missing argument for option '%s'", argv[optind - 1]);
    default:
        return img_bad_option(argv);
    }
}

/*
 * Returns 0 to go on, 1 after an error, 2 for help. The size is the last
 * argument and is taken off before getopt runs, so "-1G" is not an option.
 */
static int
parse_resize_args(int argc, char **argv, struct resize_args *a)
{
    static const struct option long_opts[] = {
        { "help", no_argument, NULL, 'h' },
        { "object", required_argument, NULL, OPT_OBJECT },
        { "image-opts", no_argument, NULL, OPT_IMAGE_OPTS },
        { "preallocation", required_argument, NULL, OPT_PREALLOCATION },
        { "shrink", no_argument, NULL, OPT_SHRINK },
        { NULL, 0, NULL, 0 },
    };
    const char *size_arg;
    int c, ret;

    if (argc < 3)
        return img_usage_error("Not enough arguments");
    size_arg = argv[--argc];
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":f:hq", long_opts, NULL)) != -1) {
        if ((ret = parse_resize_opt(c, argv, a)) != 0)
            return ret;
    }
    if (optind != argc - 1)
        return img_usage_error("Expecting image file name and size");
    a->filename = argv[optind];
    return parse_size_arg(size_arg, a) ? 0 : 1;
}

/* The new size, or -1 when it would not be positive (or overflows). */
static int64_t
new_size(const struct resize_args *a, int64_t current)
{
    int64_t total;

    if (a->size > (uint64_t)INT64_MAX)
        return -1;
    if (a->sign == 0)
        total = (int64_t)a->size;
    else if (a->sign > 0 && __builtin_add_overflow(current, (int64_t)a->size, &total))
        return -1;
    else if (a->sign < 0)
        total = current - (int64_t)a->size;
    return total > 0 ? total : -1;
}

static int
check_new_size(const struct resize_args *a, int64_t current, int64_t total)
{
    if (total < 0) {
        tool_error("New image size must be positive");
        return -1;
    }
    if (strcmp(a->prealloc, "off") != 0 && total <= current) {
        tool_error("Preallocation can only be used for growing images");
        return -1;
    }
    if (total < current && !a->is_shrink) {
        tool_error("Use the --shrink option to perform a shrink operation.");
        tool_error("warning: Shrinking an image will delete all data beyond the shrunken "
                   "image's end. Before performing such an operation, make sure there is no "
                   "important data there.");
        return -1;
    }
    return 0;
}

static int
run_resize(const struct resize_args *a)
{
    struct vimg_error err = { 0 };
    struct vimg_node *node;
    int64_t current, total;
    int ret = 1;

    node = img_open(a->is_image_opts, a->filename, a->fmt, VIMG_OPEN_RDWR | VIMG_OPEN_RESIZE,
                    a->is_quiet);
    if (!node)
        return 1;
    if ((current = vimg_node_length(node, &err)) < 0) {
        tool_error("%s", err.msg);
        goto out;
    }
    total = new_size(a, current);
    if (check_new_size(a, current, total) < 0)
        goto out;
    if (vimg_node_truncate(node, (uint64_t)total, true, a->prealloc, &err) < 0) {
        tool_error("%s", err.msg);
        goto out;
    }
    if (!a->is_quiet)
        printf("Image resized.\n");
    ret = 0;
out:
    vimg_close(node);
    return ret;
}

int
cmd_resize(int argc, char **argv)
{
    struct resize_args a = { .prealloc = "off" };
    int ret = parse_resize_args(argc, argv, &a);

    if (ret == 2) {
        img_print_help();
        return 0;
    }
    if (ret != 0)
        return ret;
    return run_resize(&a);
}
