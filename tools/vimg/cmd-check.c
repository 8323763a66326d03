/* vimg check: qemu-img check, with its exit codes (0 clean, 1 check error, 2 corrupt, 3 leaks, 63 unsupported). */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "vimg.h"

enum { OPT_OBJECT = 256, OPT_IMAGE_OPTS, OPT_OUTPUT, OPT_FORCE_SHARE };

static void
print_check_human(const struct vimg_check_result *r, const char *filename)
{
    (void)filename;
    if (r->corruptions_fixed || r->leaks_fixed)
        printf("The following inconsistencies were found and repaired:\n\n"
               "    %" PRId64 " leaked clusters\n    %" PRId64 " corruptions\n\n"
               "Double checking the fixed image now...\n", r->leaks_fixed,
               r->corruptions_fixed);
    if (r->corruptions == 0 && r->leaks == 0 && r->check_errors == 0) {
        printf("No errors were found on the image.\n");
    } else {
        if (r->corruptions)
            printf("\n%" PRId64 " errors were found on the image.\nData may be corrupted, or "
                   "further writes to the image may corrupt it.\n", r->corruptions);
        if (r->leaks)
            printf("\n%" PRId64 " leaked clusters were found on the image.\nThis means waste "
                   "of disk space, but no harm to data.\n", r->leaks);
        if (r->check_errors)
            printf("\n%" PRId64 " internal errors have occurred during the check.\n",
                   r->check_errors);
    }
    if (r->total_clusters != 0 && r->allocated_clusters != 0)
        printf("%" PRId64 "/%" PRId64 " = %0.2f%% allocated, %0.2f%% fragmented, "
               "%0.2f%% compressed clusters\n", r->allocated_clusters, r->total_clusters,
               r->allocated_clusters * 100.0 / (double)r->total_clusters,
               r->fragmented_clusters * 100.0 / (double)r->allocated_clusters,
               r->compressed_clusters * 100.0 / (double)r->allocated_clusters);
    if (r->image_end_offset > 0)
        printf("Image end offset: %" PRId64 "\n", r->image_end_offset);
}

static void
print_check_json(const struct vimg_check_result *r, const char *filename, const char *format)
{
    json_t *o = json_object();

    json_object_set_new(o, "filename", json_string(filename));
    json_object_set_new(o, "format", json_string(format));
    json_object_set_new(o, "check-errors", json_integer(r->check_errors));
    if (r->image_end_offset > 0)
        json_object_set_new(o, "image-end-offset", json_integer(r->image_end_offset));
    if (r->corruptions)
        json_object_set_new(o, "corruptions", json_integer(r->corruptions));
    if (r->leaks)
        json_object_set_new(o, "leaks", json_integer(r->leaks));
    if (r->corruptions_fixed)
        json_object_set_new(o, "corruptions-fixed", json_integer(r->corruptions_fixed));
    if (r->leaks_fixed)
        json_object_set_new(o, "leaks-fixed", json_integer(r->leaks_fixed));
    if (r->total_clusters) {
        json_object_set_new(o, "total-clusters", json_integer(r->total_clusters));
        if (r->allocated_clusters)
            json_object_set_new(o, "allocated-clusters", json_integer(r->allocated_clusters));
        if (r->fragmented_clusters)
            json_object_set_new(o, "fragmented-clusters",
                                json_integer(r->fragmented_clusters));
        if (r->compressed_clusters)
            json_object_set_new(o, "compressed-clusters",
                                json_integer(r->compressed_clusters));
    }
    tool_json_print(stdout, o, true);
    printf("\n");
    json_decref(o);
}

int
cmd_check(int argc, char **argv)
{
    static const struct option long_opts[] = {
        { "help", no_argument, NULL, 'h' },
        { "format", required_argument, NULL, 'f' },
        { "repair", required_argument, NULL, 'r' },
        { "output", required_argument, NULL, OPT_OUTPUT },
        { "object", required_argument, NULL, OPT_OBJECT },
        { "image-opts", no_argument, NULL, OPT_IMAGE_OPTS },
        { "force-share", no_argument, NULL, 'U' },
        { NULL, 0, NULL, 0 },
    };
    const char *fmt = NULL, *filename;
    bool is_image_opts = false, is_quiet = false;
    unsigned flags = VIMG_OPEN_CHECK;   /* qemu-img opens every image it checks so */
    int is_json = 0, fix = 0, c, ret;
    struct vimg_check_result result;
    struct vimg_error err = { 0 };
    struct vimg_node *node;

    opterr = 0;
    while ((c = getopt_long(argc, argv, ":hf:r:T:qU", long_opts, NULL)) != -1) {
        switch (c) {
        case 'f': fmt = optarg; break;
        case 'q': is_quiet = true; break;
        case 'U': flags |= VIMG_OPEN_FORCE_SHARE; break;
        case 'h': return 0;
        case 'T':
            if (!img_cache_flags(optarg, &flags, true))
                return 1;
            break;
        case 'r':
            flags |= VIMG_OPEN_RDWR;
            if (strcmp(optarg, "leaks") == 0) {
                fix = VIMG_CHECK_FIX_LEAKS;
            } else if (strcmp(optarg, "all") == 0) {
                fix = VIMG_CHECK_FIX_LEAKS | VIMG_CHECK_FIX_ERRORS;
            } else {
                return img_usage_error("Unknown option value for -r (expecting 'leaks' or "
                                       "'all'): %s", optarg);
            }
            break;
        case OPT_OUTPUT:
            if ((is_json = img_output_format(optarg)) < 0)
                return 1;
            break;
        case OPT_IMAGE_OPTS: is_image_opts = true; break;
        case OPT_OBJECT:
            if (!img_add_object(optarg))
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
    filename = argv[optind];
    node = img_open(is_image_opts, filename, fmt, flags, is_quiet);
    if (!node)
        return 1;
    ret = vimg_image_check(node, fix, &result, &err);
    if (ret == -ENOTSUP) {
        tool_error("This image format does not support checks");
        vimg_close(node);
        return 63;
    }
    if (ret < 0) {
        tool_error("Check failed: %s", err.msg);
        vimg_close(node);
        return 1;
    }
    if (is_json)
        print_check_json(&result, filename, vimg_node_format(node));
    else if (!is_quiet)
        print_check_human(&result, filename);
    vimg_close(node);
    if (result.check_errors) {
        tool_error("Check failed");
        return 1;
    }
    if (result.corruptions)
        return 2;
    if (result.leaks)
        return 3;
    return 0;
}
