/*
 * Internal snapshots, bitmap lists and amend: dispatch to the format driver, with the
 * reference tool's answers for formats that have neither.
 */
#include <errno.h>
#include <stdlib.h>

#include "core/driver.h"

int
vimg_snapshot_list(struct vimg_node *node, struct vimg_snapshot **list, size_t *n,
                   struct vimg_error *err)
{
    *list = NULL;
    *n = 0;
    if (!node->drv->snapshot_list)
        return 0;
    return node->drv->snapshot_list(node, list, n, err);
}

void
vimg_snapshot_list_free(struct vimg_snapshot *list, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free(list[i].id);
        free(list[i].name);
    }
    free(list);
}

int
vimg_snapshot_create(struct vimg_node *node, const struct vimg_snapshot *sn,
                     struct vimg_error *err)
{
    if (node->is_read_only)
        return vimg_error_set(err, EACCES, "Image is read-only");
    if (!node->drv->snapshot_create)
        return vimg_error_set(err, ENOTSUP, "Block format '%s' does not support internal "
                              "snapshots", node->drv->name);
    return node->drv->snapshot_create(node, sn, err);
}

int
vimg_snapshot_apply(struct vimg_node *node, const char *id_or_name, struct vimg_error *err)
{
    int ret;

    if (!node->drv->snapshot_apply)
        return vimg_error_set(err, ENOTSUP, "Block driver does not support snapshots");
    if (node->is_read_only)
        return vimg_error_set(err, EACCES, "Image is read-only");
    ret = node->drv->snapshot_apply(node, id_or_name, err);
    if (ret == 0 && node->is_root) {
        /* A snapshot may have another size: requests are checked against the new one. */
        int64_t len = vimg_node_length(node, err);
        if (len < 0)
            return (int)len;
        node->cached_length = len;
    }
    return ret;
}

int
vimg_snapshot_load_tmp(struct vimg_node *node, const char *id, const char *name,
                       struct vimg_error *err)
{
    if (!id && !name)
        return vimg_error_set(err, EINVAL, "snapshot_id and snapshot_name are both NULL");
    if (!node->is_read_only)
        return vimg_error_set(err, EINVAL, "Device is not readonly");
    if (!node->drv->snapshot_load_tmp)
        return vimg_error_set(err, ENOTSUP, "Block format '%s' used by device '' does not "
                              "support temporarily loading internal snapshots",
                              node->drv->name);
    return node->drv->snapshot_load_tmp(node, id, name, err);
}

int
vimg_snapshot_delete(struct vimg_node *node, const char *id, const char *name,
                     struct vimg_error *err)
{
    if (!node->drv->snapshot_delete)
        return vimg_error_set(err, ENOTSUP, "Block format '%s' does not support internal "
                              "snapshots", node->drv->name);
    if (node->is_read_only)
        return vimg_error_set(err, EACCES, "Image is read-only");
    return node->drv->snapshot_delete(node, id, name, err);
}

int
vimg_image_bitmap_list(struct vimg_node *node, struct vimg_bitmap_info **list, size_t *n,
                       struct vimg_error *err)
{
    *list = NULL;
    *n = 0;
    if (!node->drv->bitmap_list)
        return vimg_error_set(err, ENOTSUP, "Format driver '%s' does not support bitmaps",
                              node->drv->name);
    return node->drv->bitmap_list(node, list, n, err);
}

int
vimg_image_bitmap_read(struct vimg_node *node, const char *name, uint8_t **bits,
                       uint64_t *granularity, struct vimg_error *err)
{
    *bits = NULL;
    if (!node->drv->bitmap_read)
        return vimg_error_set(err, ENOENT, "Bitmap '%s' is not found", name);
    return node->drv->bitmap_read(node, name, bits, granularity, err);
}

void
vimg_bitmap_list_free(struct vimg_bitmap_info *list, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(list[i].name);
    free(list);
}

int
vimg_image_amend(struct vimg_node *node, struct vimg_opts *opts, bool is_forced,
                 vimg_progress_fn *progress, void *opaque, struct vimg_error *err)
{
    if (!node->drv->amend)
        return vimg_error_set(err, ENOTSUP, "Format driver '%s' does not support option "
                              "amendment", node->drv->name);
    return node->drv->amend(node, opts, is_forced, progress, opaque, err);
}
