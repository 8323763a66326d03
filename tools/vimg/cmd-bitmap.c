/*
 * vimg bitmap: qemu-img bitmap. Applies the actions --add, --remove,
 * --clear, --enable, --disable and --merge SOURCE, in the order given, to
 * one persistent dirty bitmap of an image; --merge takes SOURCE from another
 * image with -b (and -F). Actions done before a failing one stay done, as in
 * qemu-img.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "vimg.h"

enum {
    OPT_OBJECT = 256,
    OPT_IMAGE_OPTS,
    OPT_ADD,
    OPT_REMOVE,
    OPT_CLEAR,
    OPT_ENABLE,
    OPT_DISABLE,
    OPT_MERGE,
};

#define MAX_ACTIONS 64

struct bitmap_action {
    enum vimg_bitmap_action action;
    const char *source;
};

struct bitmap_args {
    const char *fmt;
    const char *src_file;       /* -b */
    const char *src_fmt;        /* -F */
    const char *filename;
    const char *bitmap;
    int64_t granularity;        /* -g; 0 = default */
    bool has_add;
    bool has_merge;
    bool is_image_opts;
    struct bitmap_action actions[MAX_ACTIONS];
    int n_actions;
};

static const char *const action_names[] = {
    [VIMG_BITMAP_ADD] = "add",
    [VIMG_BITMAP_REMOVE] = "remove",
    [VIMG_BITMAP_CLEAR] = "clear",
    [VIMG_BITMAP_ENABLE] = "enable",
    [VIMG_BITMAP_DISABLE] = "disable",
    [VIMG_BITMAP_MERGE] = "merge",
};

static int
add_action(struct bitmap_args *a, enum vimg_bitmap_action action, const char *source)
{
    if (a->n_actions == MAX_ACTIONS) {
        tool_error("Too many actions (at most %d)", MAX_ACTIONS);
        return 1;
    }
    a->actions[a->n_actions].action = action;
    a->actions[a->n_actions].source = source;
    a->n_actions++;
    a->has_add |= action == VIMG_BITMAP_ADD;
    a->has_merge |= action == VIMG_BITMAP_MERGE;
    return 0;
}

static bool
parse_granularity(const char *arg, int64_t *out)
{
    uint64_t v;
    int ret = vimg_parse_size(arg, &v);

    if (ret == 0 && v > INT64_MAX)
        ret = -ERANGE;
    if (ret == -ERANGE) {
        tool_error("Invalid granularity specified. Must be between 0 and %" PRId64 ".",
                   INT64_MAX);
        return false;
    }
    if (ret < 0) {
        tool_error("Invalid granularity specified. You may use k, M, G, T, P or E suffixes "
                   "for");
        tool_error("kilobytes, megabytes, gigabytes, terabytes, petabytes and exabytes.");
        return false;
    }
    *out = (int64_t)v;
    return true;
}

static int
parse_bitmap_opt(int c, char **argv, struct bitmap_args *a)
{
    switch (c) {
    case 'f': a->fmt = optarg; return 0;
    case 'b': a->src_file = optarg; return 0;
    case 'F': a->src_fmt = optarg; return 0;
    case 'g': return parse_granularity(optarg, &a->granularity) ? 0 : 1;
    case 'h': return 2;
    case OPT_OBJECT: return img_add_object(optarg) ? 0 : 1;
    case OPT_IMAGE_OPTS: a->is_image_opts = true; return 0;
    case OPT_ADD: return add_action(a, VIMG_BITMAP_ADD, NULL);
    case OPT_REMOVE: return add_action(a, VIMG_BITMAP_REMOVE, NULL);
    case OPT_CLEAR: return add_action(a, VIMG_BITMAP_CLEAR, NULL);
    case OPT_ENABLE: return add_action(a, VIMG_BITMAP_ENABLE, NULL);
    case OPT_DISABLE: return add_action(a, VIMG_BITMAP_DISABLE, NULL);
    case OPT_MERGE: return add_action(a, VIMG_BITMAP_MERGE, optarg);
    case ':':
        return img_usage_error("missing argument for option '%s'", argv[optind - 1]);
    default:
        return img_bad_option(argv);
    }
}

static int
check_bitmap_args(struct bitmap_args *a)
{
    if (a->n_actions == 0) {
        tool_error("Need at least one of --add, --remove, --clear, --enable, --disable, or "
                   "--merge");
        return 1;
    }
    if (a->granularity && !a->has_add) {
        tool_error("granularity only supported with --add");
        return 1;
    }
    if (a->src_fmt && !a->src_file) {
        tool_error("-F only supported with -b");
        return 1;
    }
    if (a->src_file && !a->has_merge) {
        tool_error("Merge bitmap source file only supported with --merge");
        return 1;
    }
    return 0;
}

/* Returns 0 to go on, 1 after an error, 2 for help. */
static int
parse_bitmap_args(int argc, char **argv, struct bitmap_args *a)
{
    static const struct option long_opts[] = {
        { "help", no_argument, NULL, 'h' },
        { "object", required_argument, NULL, OPT_OBJECT },
        { "image-opts", no_argument, NULL, OPT_IMAGE_OPTS },
        { "add", no_argument, NULL, OPT_ADD },
        { "remove", no_argument, NULL, OPT_REMOVE },
        { "clear", no_argument, NULL, OPT_CLEAR },
        { "enable", no_argument, NULL, OPT_ENABLE },
        { "disable", no_argument, NULL, OPT_DISABLE },
        { "merge", required_argument, NULL, OPT_MERGE },
        { NULL, 0, NULL, 0 },
    };
    int c, ret;

    opterr = 0;
    while ((c = getopt_long(argc, argv, ":b:hg:f:F:", long_opts, NULL)) != -1) {
        if ((ret = parse_bitmap_opt(c, argv, a)) != 0)
            return ret;
    }
    if ((ret = check_bitmap_args(a)) != 0)
        return ret;
    if (optind + 2 != argc) {
        tool_error("Expecting filename and bitmap name");
        return 1;
    }
    a->filename = argv[optind];
    a->bitmap = argv[optind + 1];
    return 0;
}

static int
run_actions(const struct bitmap_args *a, struct vimg_node *node, struct vimg_node *src)
{
    struct vimg_error err = { 0 };

    for (int i = 0; i < a->n_actions; i++) {
        struct vimg_bitmap_op op = {
            .action = a->actions[i].action,
            .name = a->bitmap,
            .granularity = (uint64_t)a->granularity,
            .source = a->actions[i].source,
            .source_node = src,
        };
        if (vimg_image_bitmap(node, &op, &err) < 0) {
            tool_error("Operation %s on bitmap %s failed: %s", action_names[op.action],
                       a->bitmap, err.msg);
            /* qemu-img's hint after its error line; vimg errors are one line. */
            if (strstr(err.msg, "is inconsistent and cannot be used"))
                fprintf(stderr, "Try block-dirty-bitmap-remove to delete this bitmap from "
                        "disk\n");
            return 1;
        }
    }
    return 0;
}

static int
run_bitmap(const struct bitmap_args *a)
{
    struct vimg_node *node = NULL, *src = NULL;
    int ret = 1;

    /* The source first: a failing open after the writable one would leave the image with
       its bitmaps flagged as stale (qcow2 clears the autoclear bit on a writable open). */
    if (a->src_file && !(src = img_open(false, a->src_file, a->src_fmt, 0, false)))
        return 1;
    node = img_open(a->is_image_opts, a->filename, a->fmt, VIMG_OPEN_RDWR, false);
    if (!node)
        goto out;
    ret = run_actions(a, node, src);
out:
    vimg_close(src);
    vimg_close(node);
    return ret;
}

int
cmd_bitmap(int argc, char **argv)
{
    struct bitmap_args a = { 0 };
    int ret = parse_bitmap_args(argc, argv, &a);

    if (ret == 2) {
        img_print_help();
        return 0;
    }
    if (ret != 0)
        return ret;
    return run_bitmap(&a);
}
