/*
 * vimg measure: qemu-img measure. How much space an image of the output
 * format (-O, creation options -o) needs, for --size bytes or to hold the
 * contents of an existing image; human or JSON output.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "vimg.h"

enum { OPT_OBJECT = 256, OPT_IMAGE_OPTS, OPT_OUTPUT, OPT_SIZE };

struct measure_args {
    const char *fmt;
    const char *out_fmt;
    struct img_snapshot_param snapshot;  /* -l */
    const char *filename;
    char *options;               /* -o strings joined with ',', malloc'd */
    bool is_image_opts;
    bool is_json;
    unsigned flags;
    int64_t size;                /* --size, -1 when not given */
};

/*
 * qemu-img's test of an -o argument: not empty, not starting with a comma
 * and not ending in an unescaped one (",," is an escaped comma).
 */
static bool
option_list_is_valid(const char *s)
{
    size_t n_commas = 0, len = strlen(s);

    if (len == 0 || s[0] == ',')
        return false;
    while (n_commas < len && s[len - 1 - n_commas] == ',')
        n_commas++;
    return n_commas % 2 == 0;
}

static bool
append_options(char **all, const char *more)
{
    char *joined;

    if (!option_list_is_valid(more)) {
        tool_error("Invalid option list: %s", more);
        return false;
    }
    if (!*all)
        return (*all = strdup(more)) != NULL;
    if (asprintf(&joined, "%s,%s", *all, more) < 0)
        return false;
    free(*all);
    *all = joined;
    return true;
}

static int
parse_measure_opt(int c, struct measure_args *a)
{
    int is_json;

    switch (c) {
    case 'f': a->fmt = optarg; return 0;
    case 'O': a->out_fmt = optarg; return 0;
    case 'U': a->flags |= VIMG_OPEN_FORCE_SHARE; return 0;
    case 'o': return append_options(&a->options, optarg) ? 0 : 1;
    case 'l': return img_snapshot_param_parse(&a->snapshot, optarg) ? 0 : 1;
    case OPT_OBJECT: return img_add_object(optarg) ? 0 : 1;
    case OPT_IMAGE_OPTS: a->is_image_opts = true; return 0;
    case OPT_OUTPUT:
        if ((is_json = img_output_format(optarg)) < 0)
            return 1;
        a->is_json = is_json;
        return 0;
    case OPT_SIZE:
        return (a->size = tool_cvtnum("image size", optarg)) < 0 ? 1 : 0;
    default:
        return 1;
    }
}

/*
 * Returns 0 to go on, 1 after an error, 2 for help. Unlike the other
 * commands, qemu-img measure lets getopt report a bad option and then prints
 * the help text and succeeds.
 */
static int
parse_measure_args(int argc, char **argv, struct measure_args *a)
{
    static const struct option long_opts[] = {
        { "help", no_argument, NULL, 'h' },
        { "image-opts", no_argument, NULL, OPT_IMAGE_OPTS },
        { "object", required_argument, NULL, OPT_OBJECT },
        { "output", required_argument, NULL, OPT_OUTPUT },
        { "size", required_argument, NULL, OPT_SIZE },
        { "force-share", no_argument, NULL, 'U' },
        { NULL, 0, NULL, 0 },
    };
    int c, ret;

    opterr = 1;
    while ((c = getopt_long(argc, argv, "hf:O:o:l:U", long_opts, NULL)) != -1) {
        if (c == 'h' || c == '?')
            return 2;
        if ((ret = parse_measure_opt(c, a)) != 0)
            return ret;
    }
    if (argc - optind > 1) {
        tool_error("At most one filename argument is allowed.");
        return 1;
    }
    a->filename = optind < argc ? argv[optind] : NULL;
    if (a->filename && a->size >= 0) {
        tool_error("--size N cannot be used together with a filename.");
        return 1;
    }
    if (!a->filename && (a->is_image_opts || a->fmt || a->snapshot.param)) {
        tool_error("--image-opts, -f, and -l require a filename argument.");
        return 1;
    }
    if (!a->filename && a->size < 0) {
        tool_error("Either --size N or one filename must be specified.");
        return 1;
    }
    return 0;
}

/*
 * Reads one "key[=value]" element of an -o list into key and value (",," in
 * a value is a comma); a bare "key" means "on" and a bare "nokey" "off".
 * Returns the rest of the list.
 */
static const char *
next_option(const char *p, char *key, size_t key_size, char *value, size_t value_size)
{
    size_t n = 0;

    while (*p && *p != '=' && *p != ',') {
        if (n + 1 < key_size)
            key[n++] = *p;
        p++;
    }
    key[n] = '\0';
    if (*p != '=' && strncmp(key, "no", 2) == 0) {
        memmove(key, key + 2, n - 1);   /* n - 2 characters and the NUL */
        snprintf(value, value_size, "off");
    } else if (*p != '=') {
        snprintf(value, value_size, "on");
    } else {
        n = 0;
        for (p++; *p && (*p != ',' || p[1] == ','); p++) {
            if (*p == ',')
                p++;
            if (n + 1 < value_size)
                value[n++] = *p;
        }
        value[n] = '\0';
    }
    return *p == ',' ? p + 1 : p;
}

/*
 * Adds the -o list to opts one element at a time, checking each against the
 * output format's creation options, so the first bad element is the one
 * reported, as qemu-img reports it.
 */
static int
add_create_options(struct vimg_opts *opts, const char *list, const char *fmt,
                   struct vimg_error *err)
{
    size_t size = strlen(list) + 3;
    char *key = malloc(size), *value = malloc(size);
    int ret = 0;

    if (!key || !value)
        ret = vimg_error_set(err, ENOMEM, "Out of memory");
    while (ret == 0 && *list) {
        struct vimg_opts *one = vimg_opts_new();
        list = next_option(list, key, size, value, size);
        if (!one)
            ret = vimg_error_set(err, ENOMEM, "Out of memory");
        else if (!key[0])
            ret = vimg_error_set(err, EINVAL, "Invalid parameter ''");
        if (ret == 0)
            ret = vimg_opts_set(one, key, value, err);
        if (ret == 0)
            ret = vimg_create_validate(fmt, "file:", one, err);
        if (ret == 0)
            ret = vimg_opts_set(opts, key, value, err);
        vimg_opts_free(one);
    }
    free(key);
    free(value);
    return ret;
}

/* The creation options of -o and --size for the output format; NULL after an error. */
static struct vimg_opts *
build_create_opts(const struct measure_args *a)
{
    struct vimg_error err = { 0 };
    struct vimg_opts *opts = vimg_opts_new();
    char buf[32];

    if (!opts)
        return NULL;
    if (a->options && add_create_options(opts, a->options, a->out_fmt, &err) < 0)
        goto fail;
    if (a->size >= 0) {
        snprintf(buf, sizeof(buf), "%" PRId64, a->size);
        if (vimg_opts_set(opts, "size", buf, &err) < 0)
            goto fail;
    }
    return opts;
fail:
    tool_error("%s", err.msg);
    tool_error("Invalid options for file format '%s'", a->out_fmt);
    vimg_opts_free(opts);
    return NULL;
}

static void
print_measure(const struct vimg_measure *m, bool is_json)
{
    json_t *obj;

    if (!is_json) {
        printf("required size: %" PRIu64 "\n", m->required);
        printf("fully allocated size: %" PRIu64 "\n", m->fully_allocated);
        if (m->has_bitmaps)
            printf("bitmaps size: %" PRIu64 "\n", m->bitmaps);
        return;
    }
    obj = json_object();
    json_object_set_new(obj, "required", json_integer((json_int_t)m->required));
    json_object_set_new(obj, "fully-allocated", json_integer((json_int_t)m->fully_allocated));
    if (m->has_bitmaps)
        json_object_set_new(obj, "bitmaps", json_integer((json_int_t)m->bitmaps));
    tool_json_print(stdout, obj, true);
    printf("\n");
    json_decref(obj);
}

/* Opens the input image, if any, and loads its -l snapshot read-only. */
static int
open_input(const struct measure_args *a, struct vimg_node **in)
{
    *in = NULL;
    if (!a->filename)
        return 0;
    *in = img_open(a->is_image_opts, a->filename, a->fmt, a->flags, false);
    if (!*in)
        return -1;
    if (a->snapshot.param && !img_snapshot_param_load(&a->snapshot, *in))
        return -1;
    return 0;
}

static int
run_measure(const struct measure_args *a)
{
    struct vimg_error err = { 0 };
    struct vimg_opts *opts = NULL;
    struct vimg_node *in;
    struct vimg_measure m;
    int ret = 1;

    if (open_input(a, &in) < 0)
        goto out;
    if (!vimg_format_exists(a->out_fmt)) {
        tool_error("Unknown file format '%s'", a->out_fmt);
        goto out;
    }
    if (!(opts = build_create_opts(a)))
        goto out;
    if (vimg_image_measure(a->out_fmt, opts, in, a->size >= 0 ? (uint64_t)a->size : 0, &m,
                           &err) < 0) {
        tool_error("%s", err.msg);
        goto out;
    }
    print_measure(&m, a->is_json);
    ret = 0;
out:
    vimg_opts_free(opts);
    vimg_close(in);
    return ret;
}

int
cmd_measure(int argc, char **argv)
{
    struct measure_args a = { .out_fmt = "raw", .size = -1 };
    int ret = parse_measure_args(argc, argv, &a);

    if (ret == 0) {
        ret = run_measure(&a);
    } else if (ret == 2) {
        img_print_help();
        ret = 0;
    }
    free(a.options);
    img_snapshot_param_free(&a.snapshot);
    return ret;
}
