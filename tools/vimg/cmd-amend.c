/*
 * vimg amend: qemu-img amend. Changes options of an existing image
 * (-o key=value,...), with qemu-img's option checks and texts. -p prints the
 * progress the format reports, framed as qemu-img frames it: 0 before, 100
 * after (also when amend fails), and the final newline on every way out once
 * the arguments are read, -o help included.
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "vimg.h"

enum { OPT_OBJECT = 256, OPT_IMAGE_OPTS, OPT_FORCE };

struct amend_args {
    const char *fmt;
    const char *cache;
    const char *filename;
    char *options;              /* -o strings joined with ',', malloc'd */
    bool is_image_opts;
    bool is_quiet;
    bool is_forced;
    bool is_progress;           /* -p */
};

/* What `amend -o help` lists for qcow2, and the creation-only options it names. */
static const char amend_help_qcow2[] =
"Amend options for 'qcow2':\n"
"  backing_file=<str>     - File name of a base image\n"
"  backing_fmt=<str>      - Image format of the base image\n"
"  compat=<str>           - Compatibility level (v2 [0.10] or v3 [1.1])\n"
"  data_file=<str>        - File name of an external data file\n"
"  data_file_raw=<bool (on/off)> - The external data file must stay valid as a raw image\n"
"  encrypt.iter-time=<num> - Time to spend in PBKDF in milliseconds\n"
"  encrypt.keyslot=<num>  - Select a single keyslot to modify explicitly\n"
"  encrypt.new-secret=<str> - New secret to set in the matching keyslots. Empty string to "
"erase\n"
"  encrypt.old-secret=<str> - Select all keyslots that match this password\n"
"  encrypt.state=<str>    - Select new state of affected keyslots (active/inactive)\n"
"  lazy_refcounts=<bool (on/off)> - Postpone refcount updates\n"
"  refcount_bits=<num>    - Width of a reference count entry in bits\n"
"  size=<size>            - Virtual disk size\n";

static const char amend_help_luks[] =
"Amend options for 'luks':\n"
"  iter-time=<num>        - Time to spend in PBKDF in milliseconds\n"
"  keyslot=<num>          - Select a single keyslot to modify explicitly\n"
"  new-secret=<str>       - New secret to set in the matching keyslots. Empty string to "
"erase\n"
"  old-secret=<str>       - Select all keyslots that match this password\n"
"  state=<str>            - Select new state of affected keyslots (active/inactive)\n";

static const char *const amend_keys_luks[] = {
    "iter-time", "keyslot", "new-secret", "old-secret", "state", NULL,
};

static const char *const amend_keys_qcow2[] = {
    "backing_file", "backing_fmt", "compat", "data_file", "data_file_raw",
    "encrypt.iter-time", "encrypt.keyslot", "encrypt.new-secret", "encrypt.old-secret",
    "encrypt.state", "lazy_refcounts", "refcount_bits", "size", NULL,
};

static bool
amend_takes(const char *fmt, const char *key)
{
    const char *const *keys = strcmp(fmt, "qcow2") == 0 ? amend_keys_qcow2
                              : strcmp(fmt, "luks") == 0 ? amend_keys_luks : NULL;

    for (size_t k = 0; keys && keys[k]; k++)
        if (strcmp(keys[k], key) == 0)
            return true;
    return false;
}

static bool
append_options(char **all, const char *more)
{
    char *joined;

    if (!*all)
        return (*all = strdup(more)) != NULL;
    if (asprintf(&joined, "%s,%s", *all, more) < 0)
        return false;
    free(*all);
    *all = joined;
    return true;
}

static int
parse_amend_opt(int c, char **argv, struct amend_args *a)
{
    switch (c) {
    case 'f': a->fmt = optarg; return 0;
    case 't': a->cache = optarg; return 0;
    case 'q': a->is_quiet = true; return 0;
    case 'p': a->is_progress = true; return 0;
    case 'h': return 2;
    case 'o': return append_options(&a->options, optarg) ? 0 : 1;
    case OPT_OBJECT: return img_add_object(optarg) ? 0 : 1;
    case OPT_IMAGE_OPTS: a->is_image_opts = true; return 0;
    case OPT_FORCE: a->is_forced = true; return 0;
    case ':':
        return img_usage_error("missing argument for option '%s'", argv[optind - 1]);
    default:
        return img_bad_option(argv);
    }
}

/* Returns 0 to go on, 1 after an error, 2 for help. */
static int
parse_amend_args(int argc, char **argv, struct amend_args *a)
{
    static const struct option long_opts[] = {
        { "help", no_argument, NULL, 'h' },
        { "object", required_argument, NULL, OPT_OBJECT },
        { "image-opts", no_argument, NULL, OPT_IMAGE_OPTS },
        { "force", no_argument, NULL, OPT_FORCE },
        { NULL, 0, NULL, 0 },
    };
    int c, ret;

    opterr = 0;
    while ((c = getopt_long(argc, argv, ":ho:f:t:pq", long_opts, NULL)) != -1) {
        if ((ret = parse_amend_opt(c, argv, a)) != 0)
            return ret;
    }
    if (!a->options)
        return img_usage_error("Must specify options (-o)");
    if (optind != argc - 1)
        return img_usage_error("Expecting one image file name");
    a->filename = argv[optind];
    return 0;
}

/* Parses the -o list, refusing keys amend does not take with qemu-img's texts. */
static struct vimg_opts *
parse_amend_options(const struct amend_args *a, const char *fmt)
{
    struct vimg_error err = { 0 };
    struct vimg_opts *opts = vimg_opts_new();

    if (!opts || vimg_opts_parse(opts, a->options, NULL, &err) < 0) {
        tool_error("%s", err.msg);
        vimg_opts_free(opts);
        return NULL;
    }
    for (size_t i = 0; i < vimg_opts_count(opts); i++) {
        const char *key = vimg_opts_key_at(opts, i);
        struct vimg_opts *sub = vimg_opts_dict_at(opts, i), *probe = vimg_opts_new();
        char full[256] = "";
        bool is_amend = sub != NULL;
        /* Dotted keys (encrypt.state) are checked by full name; the first refused is named. */
        for (size_t j = 0; sub && is_amend && j < vimg_opts_count(sub); j++) {
            snprintf(full, sizeof(full), "%s.%s", key, vimg_opts_key_at(sub, j));
            is_amend = amend_takes(fmt, full);
        }
        if (sub)
            key = full;
        else
            is_amend = amend_takes(fmt, key);
        /* A creation option takes one of these values, whatever its type. */
        if (!is_amend && probe && vimg_opts_set(probe, key, "0", &err) == 0 &&
            (vimg_create_validate(fmt, NULL, probe, &err) == 0 ||
             (vimg_opts_set(probe, key, "on", &err) == 0 &&
              vimg_create_validate(fmt, NULL, probe, &err) == 0)))
            tool_error("Invalid parameter '%s'\nThis option is only supported for image "
                       "creation", key);
        else if (!is_amend)
            tool_error("Invalid parameter '%s'", key);
        vimg_opts_free(probe);
        if (!is_amend) {
            vimg_opts_free(opts);
            return NULL;
        }
    }
    return opts;
}

/* `-o help` for fmt (what qemu-img prints without opening the image); false if none. */
static bool
print_amend_help(const char *fmt)
{
    if (strcmp(fmt, "qcow2") == 0)
        fputs(amend_help_qcow2, stdout);
    else if (strcmp(fmt, "luks") == 0)
        fputs(amend_help_luks, stdout);
    else if (!vimg_format_exists(fmt))
        tool_error("Unknown file format '%s'", fmt);
    else
        tool_error("Format driver '%s' does not support option amendment", fmt);
    return strcmp(fmt, "qcow2") == 0 || strcmp(fmt, "luks") == 0;
}

/* The format's progress reports, as qemu-img's amend prints them. */
static void
amend_progress(uint64_t done, uint64_t total, void *opaque)
{
    tool_meter_set(opaque, total ? 100.f * (float)done / (float)total : 100.f);
}

static int
amend_image(const struct amend_args *a, struct vimg_node *node, struct tool_meter *meter)
{
    struct vimg_error err = { 0 };
    struct vimg_opts *opts;
    const char *fmt = vimg_node_format(node);
    int ret;

    if (strcmp(a->options, "help") == 0)
        return print_amend_help(fmt) ? 0 : 1;
    if (strcmp(fmt, "qcow2") != 0 && strcmp(fmt, "luks") != 0) {
        tool_error("Format driver '%s' does not support option amendment", fmt);
        return 1;
    }
    if (!(opts = parse_amend_options(a, fmt)))
        return 1;
    tool_meter_set(meter, 0);
    ret = vimg_image_amend(node, opts, a->is_forced, amend_progress, meter, &err);
    tool_meter_set(meter, 100);
    if (ret < 0)
        tool_error("%s", err.msg);
    vimg_opts_free(opts);
    return ret < 0 ? 1 : 0;
}

static int
run_amend(const struct amend_args *a)
{
    struct tool_meter meter;
    struct vimg_node *node;
    unsigned flags = VIMG_OPEN_RDWR | VIMG_OPEN_NO_BACKING | VIMG_OPEN_RESIZE;
    int ret = 1;

    tool_meter_init(&meter, a->is_progress && !a->is_quiet, 1.0f);
    if (a->cache && !img_cache_flags(a->cache, &flags, false))
        goto out;
    /* As qemu-img, -f FMT -o help needs no image (a luks one would need its secret). */
    if (a->fmt && strcmp(a->options, "help") == 0) {
        ret = print_amend_help(a->fmt) ? 0 : 1;
        goto out;
    }
    if ((node = img_open(a->is_image_opts, a->filename, a->fmt, flags, a->is_quiet))) {
        ret = amend_image(a, node, &meter);
        vimg_close(node);
    }
out:
    tool_meter_end(&meter);
    return ret;
}

int
cmd_amend(int argc, char **argv)
{
    struct amend_args a = { 0 };
    int ret = parse_amend_args(argc, argv, &a);

    if (ret == 2) {
        img_print_help();
        ret = 0;
    } else if (ret == 0) {
        ret = run_amend(&a);
    }
    free(a.options);
    return ret;
}
