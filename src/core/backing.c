/*
 * Backing chains as the tools change them: recording a new backing file
 * (rebase), emptying a layer after commit, finding an image in a chain by
 * name (commit -b), and the persistent dirty bitmap actions (bitmap). The
 * formats do the work through their change_backing_file, make_empty and
 * bitmap ops.
 */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/driver.h"

int
vimg_image_change_backing_file(struct vimg_node *node, const char *backing_file,
                               const char *backing_fmt, struct vimg_error *err)
{
    if (backing_file && !*backing_file)
        backing_file = NULL;
    if (!backing_file)
        backing_fmt = NULL;
    if (!node->drv->change_backing_file)
        return vimg_error_set(err, ENOTSUP, "Operation not supported");
    return node->drv->change_backing_file(node, backing_file, backing_fmt, err);
}

int
vimg_image_make_empty(struct vimg_node *node, struct vimg_error *err)
{
    if (!node->drv->make_empty)
        return vimg_error_set(err, ENOTSUP, "Operation not supported");
    return node->drv->make_empty(node, err);
}

/* Whether name has a protocol prefix: a ':' before any '/' ("file:", "nbd:", "json:", URLs). */
static bool
path_has_protocol(const char *name)
{
    return name[strcspn(name, ":/")] == ':';
}

char *
vimg_path_combine(const char *base, const char *name)
{
    const char *slash = strrchr(base, '/');
    char *out;

    if (name[0] == '/' || path_has_protocol(name) || !slash)
        return strdup(name);
    if (asprintf(&out, "%.*s/%s", (int)(slash - base), base, name) < 0)
        return NULL;
    return out;
}

char *
vimg_image_backing_path(const struct vimg_node *node, const char *name)
{
    return vimg_path_combine(node->filename, name);
}

/* Whether a and b name the same existing file. */
static bool
same_file(const char *a, const char *b)
{
    char ra[PATH_MAX], rb[PATH_MAX];

    if (!realpath(a, ra) || !realpath(b, rb))
        return false;
    return strcmp(ra, rb) == 0;
}

struct vimg_node *
vimg_image_find_backing(struct vimg_node *top, const char *name)
{
    for (struct vimg_node *n = top; n && n->backing; n = n->backing) {
        char *full;
        bool is_match;

        if (n->backing_filename && strcmp(n->backing_filename, name) == 0)
            return n->backing;
        if (path_has_protocol(name))
            continue;
        full = vimg_image_backing_path(n, name);
        is_match = full && same_file(full, n->backing->filename);
        free(full);
        if (is_match)
            return n->backing;
    }
    return NULL;
}

int
vimg_image_bitmap(struct vimg_node *node, const struct vimg_bitmap_op *op,
                  struct vimg_error *err)
{
    if (!node->drv->bitmap)
        return vimg_error_set(err, ENOTSUP, "Can't store persistent bitmaps to %s: "
                              "Operation not supported", node->filename);
    return node->drv->bitmap(node, op, err);
}
