/* vimg info: qemu-img info, human and JSON, with --backing-chain. */
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "vimg.h"

enum { OPT_OBJECT = 256, OPT_IMAGE_OPTS, OPT_OUTPUT, OPT_BACKING_CHAIN, OPT_FORCE_SHARE };

static void
print_snapshots(const json_t *arr)
{
    size_t n = json_array_size(arr);
    struct vimg_snapshot *list = calloc(n ? n : 1, sizeof(*list));
    json_t *sn;
    size_t i;

    if (!list)
        return;
    json_array_foreach(arr, i, sn) {
        json_t *icount = json_object_get(sn, "icount");
        list[i].id = (char *)json_string_value(json_object_get(sn, "id"));
        list[i].name = (char *)json_string_value(json_object_get(sn, "name"));
        list[i].vm_state_size = (uint64_t)json_integer_value(json_object_get(sn,
                                                                             "vm-state-size"));
        list[i].date_sec = (uint64_t)json_integer_value(json_object_get(sn, "date-sec"));
        list[i].date_nsec = (uint64_t)json_integer_value(json_object_get(sn, "date-nsec"));
        list[i].vm_clock_nsec =
            (uint64_t)json_integer_value(json_object_get(sn, "vm-clock-sec")) * 1000000000u +
            (uint64_t)json_integer_value(json_object_get(sn, "vm-clock-nsec"));
        list[i].icount = icount ? (uint64_t)json_integer_value(icount) : UINT64_MAX;
    }
    img_print_snapshots(list, n);
    free(list);
}

static void
print_human(const json_t *info)
{
    json_t *v;
    char size[64];

    printf("image: %s\n", json_string_value(json_object_get(info, "filename")));
    printf("file format: %s\n", json_string_value(json_object_get(info, "format")));
    tool_size_to_str((uint64_t)json_integer_value(json_object_get(info, "virtual-size")), size,
                     sizeof(size));
    printf("virtual size: %s (%" JSON_INTEGER_FORMAT " bytes)\n", size,
           json_integer_value(json_object_get(info, "virtual-size")));
    if ((v = json_object_get(info, "actual-size"))) {
        tool_size_to_str((uint64_t)json_integer_value(v), size, sizeof(size));
        printf("disk size: %s\n", size);
    } else {
        printf("disk size: unavailable\n");
    }
    if (json_is_true(json_object_get(info, "encrypted")))
        printf("encrypted: yes\n");
    if ((v = json_object_get(info, "cluster-size")))
        printf("cluster_size: %" JSON_INTEGER_FORMAT "\n", json_integer_value(v));
    if (json_is_true(json_object_get(info, "dirty-flag")))
        printf("cleanly shut down: no\n");
    if ((v = json_object_get(info, "backing-filename"))) {
        json_t *full = json_object_get(info, "full-backing-filename");
        printf("backing file: %s", json_string_value(v));
        if (!full)
            printf(" (cannot determine actual path)");
        else if (strcmp(json_string_value(full), json_string_value(v)) != 0)
            printf(" (actual path: %s)", json_string_value(full));
        printf("\n");
    }
    if ((v = json_object_get(info, "backing-filename-format")))
        printf("backing file format: %s\n", json_string_value(v));
    if ((v = json_object_get(info, "snapshots")))
        print_snapshots(v);
    if ((v = json_object_get(info, "format-specific"))) {
        printf("Format specific information:\n");
        tool_dump_tree(json_object_get(v, "data"), 4);
    }
}

/*
 * Collects ImageInfo for filename and, with is_chain, for each backing file
 * in turn. Like qemu-img, every image is opened alone (without its backing
 * file and without doing I/O), so a missing backing file does not stop
 * `info` of the image that names it.
 */
static int
collect_info(bool is_image_opts, const char *filename, const char *fmt, unsigned flags,
             bool is_chain, json_t *list)
{
    struct vimg_error err = { 0 };
    char *name = strdup(filename), *next_fmt = fmt ? strdup(fmt) : NULL;
    int ret = 0;

    flags |= VIMG_OPEN_NO_BACKING | VIMG_OPEN_NO_IO;
    while (name && ret == 0) {
        struct vimg_node *node = img_open(is_image_opts, name, next_fmt, flags, false);
        const char *backing;
        json_t *info;

        if (!node) {
            ret = -1;
            break;
        }
        if (vimg_image_info(node, &info, &err) < 0) {
            tool_error("%s", err.msg);
            vimg_close(node);
            ret = -1;
            break;
        }
        json_array_append_new(list, info);
        for (size_t i = 0; i + 1 < json_array_size(list); i++) {
            const char *seen = json_string_value(json_object_get(json_array_get(list, i),
                                                                 "filename"));
            if (seen && strcmp(seen, vimg_node_filename(node)) == 0) {
                tool_error("Backing file '%s' creates an infinite loop.", seen);
                ret = -1;
            }
        }
        free(name);
        free(next_fmt);
        name = next_fmt = NULL;
        backing = json_string_value(json_object_get(info, "full-backing-filename"));
        if (is_chain && backing && ret == 0) {
            const char *bfmt = vimg_node_backing_format(node);
            name = strdup(backing);
            next_fmt = bfmt ? strdup(bfmt) : NULL;
            is_image_opts = false;
        }
        vimg_close(node);
    }
    free(name);
    free(next_fmt);
    return ret;
}

int
cmd_info(int argc, char **argv)
{
    static const struct option long_opts[] = {
        { "help", no_argument, NULL, 'h' },
        { "format", required_argument, NULL, 'f' },
        { "output", required_argument, NULL, OPT_OUTPUT },
        { "backing-chain", no_argument, NULL, OPT_BACKING_CHAIN },
        { "object", required_argument, NULL, OPT_OBJECT },
        { "image-opts", no_argument, NULL, OPT_IMAGE_OPTS },
        { "force-share", no_argument, NULL, 'U' },
        { NULL, 0, NULL, 0 },
    };
    const char *fmt = NULL, *filename;
    bool is_chain = false, is_image_opts = false;
    unsigned flags = 0;
    int is_json = 0, c, ret = 1;
    json_t *list;

    opterr = 0;
    while ((c = getopt_long(argc, argv, ":f:hU", long_opts, NULL)) != -1) {
        switch (c) {
        case 'f': fmt = optarg; break;
        case 'U': flags |= VIMG_OPEN_FORCE_SHARE; break;
        case 'h': return 0;
        case OPT_OUTPUT:
            if ((is_json = img_output_format(optarg)) < 0)
                return 1;
            break;
        case OPT_BACKING_CHAIN: is_chain = true; break;
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
    list = json_array();
    if (collect_info(is_image_opts, filename, fmt, flags, is_chain, list) == 0) {
        ret = 0;
        if (is_json) {
            tool_json_print(stdout, is_chain ? list : json_array_get(list, 0), true);
            printf("\n");
        } else {
            for (size_t i = 0; i < json_array_size(list); i++) {
                if (i > 0)
                    printf("\n");
                print_human(json_array_get(list, i));
            }
        }
    }
    json_decref(list);
    return ret;
}
