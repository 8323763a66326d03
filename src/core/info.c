/*
 * Whole-image queries: ImageInfo as QEMU's `info` builds it, check and
 * measure dispatch with the reference texts for drivers that lack them.
 */
#include <errno.h>
#include <string.h>

#include "core/driver.h"

/* Whether QEMU's get_info answers for node: filters (raw) ask their file. */
static bool
info_has_get_info(const struct vimg_node *node)
{
    if (node->drv->kind == VIMG_DRIVER_PROTOCOL)
        return !node->drv->lacks_get_info;
    if (node->drv->is_filter && node->file)
        return info_has_get_info(node->file);
    return !node->drv->lacks_get_info && !node->lacks_get_info;
}

/* "snapshots", as QAPI's SnapshotInfo list; absent when the image has none. */
static int
info_add_snapshots(struct vimg_node *node, json_t *info, struct vimg_error *err)
{
    struct vimg_snapshot *list;
    json_t *arr;
    size_t n;
    int ret;

    if ((ret = vimg_snapshot_list(node, &list, &n, err)) < 0)
        return ret;
    if (n == 0) {
        vimg_snapshot_list_free(list, n);
        return 0;
    }
    arr = json_array();
    for (size_t i = 0; i < n; i++) {
        json_t *sn = json_object();
        json_object_set_new(sn, "id", json_string(list[i].id));
        json_object_set_new(sn, "name", json_string(list[i].name));
        json_object_set_new(sn, "vm-state-size", json_integer((json_int_t)list[i].vm_state_size));
        json_object_set_new(sn, "date-sec", json_integer((json_int_t)list[i].date_sec));
        json_object_set_new(sn, "date-nsec", json_integer((json_int_t)list[i].date_nsec));
        json_object_set_new(sn, "vm-clock-sec",
                            json_integer((json_int_t)(list[i].vm_clock_nsec / 1000000000u)));
        json_object_set_new(sn, "vm-clock-nsec",
                            json_integer((json_int_t)(list[i].vm_clock_nsec % 1000000000u)));
        if (list[i].icount != UINT64_MAX)
            json_object_set_new(sn, "icount", json_integer((json_int_t)list[i].icount));
        json_array_append_new(arr, sn);
    }
    vimg_snapshot_list_free(list, n);
    json_object_set_new(info, "snapshots", arr);
    return 0;
}

int
vimg_image_info(struct vimg_node *node, json_t **out, struct vimg_error *err)
{
    json_t *info = json_object();
    json_t *spec = NULL;
    int64_t size, allocated;
    int ret;

    if (!info)
        return vimg_error_set(err, ENOMEM, "Out of memory");
    size = vimg_node_length(node, err);
    if (size < 0) {
        json_decref(info);
        return (int)size;
    }
    json_object_set_new(info, "filename", json_string(node->filename));
    json_object_set_new(info, "format", json_string(node->drv->name));
    if (info_has_get_info(node))
        json_object_set_new(info, "dirty-flag", json_boolean(node->is_dirty));
    allocated = vimg_node_allocated_size(node, err);
    if (allocated >= 0)
        json_object_set_new(info, "actual-size", json_integer(allocated));
    json_object_set_new(info, "virtual-size", json_integer(size));
    if (node->cluster_size)
        json_object_set_new(info, "cluster-size", json_integer(node->cluster_size));
    if (node->is_encrypted)
        json_object_set_new(info, "encrypted", json_true());
    if (node->backing_filename) {
        json_object_set_new(info, "backing-filename", json_string(node->backing_filename));
        if (node->full_backing_filename)
            json_object_set_new(info, "full-backing-filename",
                                json_string(node->full_backing_filename));
        if (node->backing_format)
            json_object_set_new(info, "backing-filename-format",
                                json_string(node->backing_format));
    }
    if ((ret = info_add_snapshots(node, info, err)) < 0) {
        json_decref(info);
        return ret;
    }
    if (node->drv->info) {
        if ((ret = node->drv->info(node, &spec, err)) < 0) {
            json_decref(info);
            return ret;
        }
        if (spec)
            json_object_set_new(info, "format-specific", spec);
    }
    *out = info;
    return 0;
}

int
vimg_image_check(struct vimg_node *node, int fix, struct vimg_check_result *result,
                 struct vimg_error *err)
{
    int64_t corruptions_fixed, leaks_fixed;
    int ret;

    memset(result, 0, sizeof(*result));
    if (!node->drv->check)
        return vimg_error_set(err, ENOTSUP, "This image format does not support checks");
    ret = node->drv->check(node, fix, result, err);
    if (ret < 0 || !fix || (!result->corruptions_fixed && !result->leaks_fixed))
        return ret;
    /* As qemu-img: after a repair, the result is that of a second check without fixing. */
    corruptions_fixed = result->corruptions_fixed;
    leaks_fixed = result->leaks_fixed;
    memset(result, 0, sizeof(*result));
    ret = node->drv->check(node, 0, result, err);
    result->corruptions_fixed = corruptions_fixed;
    result->leaks_fixed = leaks_fixed;
    return ret;
}

int
vimg_image_measure(const char *format, struct vimg_opts *opts, struct vimg_node *in,
                   uint64_t size, struct vimg_measure *out, struct vimg_error *err)
{
    const struct vimg_driver *drv = vimg_driver_find(format);
    int64_t len;
    int ret;

    memset(out, 0, sizeof(*out));
    if (!drv)
        return vimg_error_set(err, EINVAL, "Unknown file format '%s'", format);
    if (in) {
        if ((len = vimg_node_length(in, err)) < 0)
            return (int)len;
        size = (uint64_t)len;
    }
    if (drv->measure)
        return drv->measure(opts, in, size, out, err);
    if (strcmp(drv->name, "raw") != 0)
        return vimg_error_set(err, ENOTSUP, "Block driver '%s' does not support size "
                              "measurement", format);
    /* A raw image takes its size in whole sectors, holes or not. */
    if ((ret = vimg_create_validate(format, "file:", opts, err)) < 0)
        return ret;
    out->required = (size + 511) / 512 * 512;
    out->fully_allocated = out->required;
    return 0;
}
