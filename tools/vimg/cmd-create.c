/* vimg create: qemu-img create. */
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "vimg.h"

enum { OPT_OBJECT = 256 };

/* Appends an -o string to the accumulated one, as qemu-img joins repeated -o. */
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

static bool
options_want_help(const char *options)
{
    struct vimg_opts *o = vimg_opts_new();
    bool is_help = false;

    if (o && vimg_opts_parse(o, options, NULL, NULL) == 0)
        is_help = vimg_opts_has(o, "help") || vimg_opts_has(o, "?");
    vimg_opts_free(o);
    return is_help || strcmp(options, "help") == 0 || strcmp(options, "?") == 0;
}

static int
print_create_help(const char *fmt, const char *filename)
{
    struct vimg_error err = { 0 };
    char *text;

    if (vimg_create_help(fmt, filename, &text, &err) < 0) {
        tool_error("%s", err.msg);
        return 1;
    }
    fputs(text, stdout);
    free(text);
    return 0;
}

static bool
format_has_backing(const char *fmt, const char *filename)
{
    struct vimg_opts *o = vimg_opts_new();
    bool has = o && vimg_opts_set(o, "backing_file", "x", NULL) == 0 &&
               vimg_create_validate(fmt, filename, o, NULL) == 0;

    vimg_opts_free(o);
    return has;
}

/*
 * As qemu-img does without -u: the backing file must open, its format must
 * be named, and it gives the size when none was.
 */
static int
check_backing(const char *filename, struct vimg_opts *opts)
{
    const char *backing = vimg_opts_peek(opts, "backing_file");
    const char *backing_fmt = vimg_opts_peek(opts, "backing_fmt");
    struct vimg_error err = { 0 };
    struct vimg_node *node = NULL;
    char *path = vimg_path_combine(filename, backing);
    char buf[32];
    int64_t len;
    int ret = -1;

    if (!path)
        return -1;
    if (vimg_open(&node, path, backing_fmt, NULL, VIMG_OPEN_NO_BACKING | VIMG_OPEN_NO_IO,
                  &err) < 0) {
        tool_error("%s: %s\nCould not open backing image.", filename, err.msg);
        goto out;
    }
    if (!backing_fmt) {
        /* qemu-img's hint line has no newline at its end. */
        fprintf(stderr, "%s: %s: Backing file specified without backing format\n"
                "Detected format of %s.", tool_name, filename, vimg_node_format(node));
        goto out;
    }
    if (!vimg_opts_has(opts, "size")) {
        if ((len = vimg_node_length(node, &err)) < 0) {
            tool_error("%s: %s", filename, err.msg);
            goto out;
        }
        snprintf(buf, sizeof(buf), "%" PRId64, len);
        vimg_opts_set(opts, "size", buf, NULL);
    }
    ret = 0;
out:
    vimg_close(node);
    free(path);
    return ret;
}

static int
do_create(const char *filename, const char *fmt, const char *options, const char *base,
          const char *base_fmt, int64_t size, bool is_quiet, bool is_unsafe)
{
    struct vimg_error err = { 0 };
    struct vimg_opts *opts = vimg_opts_new();
    char buf[32];
    char *desc;
    int ret = 1;

    if (!opts)
        return 1;
    if (options && vimg_opts_parse(opts, options, NULL, &err) < 0) {
        tool_error("%s: %s", filename, err.msg);
        goto out;
    }
    if (size >= 0) {
        if (vimg_opts_has(opts, "size")) {
            tool_error("%s: The image size must be specified only once", filename);
            goto out;
        }
        snprintf(buf, sizeof(buf), "%" PRId64, size);
        vimg_opts_set(opts, "size", buf, NULL);
    }
    if (base && !format_has_backing(fmt, filename)) {
        tool_error("%s: Backing file not supported for file format '%s'", filename, fmt);
        goto out;
    }
    if (base && vimg_opts_set(opts, "backing_file", base, &err) < 0)
        goto fail_err;
    if (base_fmt && vimg_opts_set(opts, "backing_fmt", base_fmt, &err) < 0)
        goto fail_err;
    if (vimg_create_validate(fmt, filename, opts, &err) < 0)
        goto fail_err;
    if (vimg_opts_peek(opts, "backing_file") && !is_unsafe && check_backing(filename, opts) < 0)
        goto out;
    if (!vimg_opts_has(opts, "size")) {
        tool_error("%s: Image creation needs a size parameter", filename);
        goto out;
    }
    if (!is_quiet) {
        desc = vimg_create_describe(fmt, filename, opts);
        printf("Formatting '%s', %s\n", filename, desc ? desc : "");
        fflush(stdout);
        free(desc);
    }
    if (vimg_create(filename, fmt, opts, &err) < 0)
        goto fail_err;
    ret = 0;
    goto out;
fail_err:
    tool_error("%s: %s", filename, err.msg);
out:
    vimg_opts_free(opts);
    return ret;
}

int
cmd_create(int argc, char **argv)
{
    static const struct option long_opts[] = {
        { "help", no_argument, NULL, 'h' },
        { "object", required_argument, NULL, OPT_OBJECT },
        { NULL, 0, NULL, 0 },
    };
    const char *fmt = "raw", *base = NULL, *base_fmt = NULL, *filename;
    char *options = NULL;
    bool is_quiet = false, is_unsafe = false;
    int64_t size = -1;
    int c, ret = 1;

    opterr = 0;
    while ((c = getopt_long(argc, argv, ":F:b:f:ho:qu", long_opts, NULL)) != -1) {
        switch (c) {
        case 'F': base_fmt = optarg; break;
        case 'b': base = optarg; break;
        case 'f': fmt = optarg; break;
        case 'o':
            if (!append_options(&options, optarg))
                goto out;
            break;
        case 'q': is_quiet = true; break;
        case 'u': is_unsafe = true; break;
        case OPT_OBJECT:
            if (!img_add_object(optarg))
                goto out;
            break;
        case 'h':
            free(options);
            return 0;
        case ':':
            ret = img_usage_error("missing argument for option '%s'", argv[optind - 1]);
            goto out;
        default:
            ret = img_bad_option(argv);
            goto out;
        }
    }
    if (options && options_want_help(options)) {
        ret = print_create_help(fmt, optind < argc ? argv[optind] : NULL);
        goto out;
    }
    if (optind >= argc) {
        ret = img_usage_error("Expecting image file name");
        goto out;
    }
    filename = argv[optind++];
    if (!vimg_format_exists(fmt)) {
        tool_error("%s: Unknown file format '%s'", filename, fmt);
        goto out;
    }
    if (optind < argc) {
        if ((size = tool_cvtnum("image size", argv[optind++])) < 0)
            goto out;
    }
    if (optind != argc) {
        ret = img_usage_error("Unexpected argument: %s", argv[optind]);
        goto out;
    }
    ret = do_create(filename, fmt, options, base, base_fmt, size, is_quiet, is_unsafe);
out:
    free(options);
    return ret;
}
