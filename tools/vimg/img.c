/*
 * Helpers the vimg subcommands share: opening images, --object, --output,
 * cache modes, -l snapshot parameters.
 */
#include <errno.h>
#include <getopt.h>
#include <stdlib.h>
#include <string.h>

#include "vimg.h"

bool
img_add_object(const char *spec)
{
    struct vimg_error err = { 0 };

    if (vimg_object_add(spec, &err) < 0) {
        tool_error("%s", err.msg);
        return false;
    }
    return true;
}

int
img_output_format(const char *arg)
{
    if (strcmp(arg, "json") == 0)
        return 1;
    if (strcmp(arg, "human") == 0)
        return 0;
    tool_error("--output must be used with human or json as argument.");
    return -1;
}

bool
img_cache_flags(const char *mode, unsigned *flags, bool is_source)
{
    *flags &= ~(VIMG_OPEN_NOCACHE | VIMG_OPEN_NO_FLUSH | VIMG_OPEN_WRITETHROUGH);
    if (strcmp(mode, "none") == 0 || strcmp(mode, "off") == 0) {
        *flags |= VIMG_OPEN_NOCACHE;
    } else if (strcmp(mode, "directsync") == 0) {
        *flags |= VIMG_OPEN_NOCACHE | VIMG_OPEN_WRITETHROUGH;
    } else if (strcmp(mode, "writethrough") == 0) {
        *flags |= VIMG_OPEN_WRITETHROUGH;
    } else if (strcmp(mode, "unsafe") == 0) {
        *flags |= VIMG_OPEN_NO_FLUSH;
    } else if (strcmp(mode, "writeback") != 0) {
        tool_error(is_source ? "Invalid source cache option: %s" : "Invalid cache option: %s",
                   mode);
        return false;
    }
    return true;
}

struct vimg_node *
img_open(bool is_image_opts, const char *filename, const char *fmt, unsigned flags,
         bool is_quiet)
{
    struct vimg_error err = { 0 };
    struct vimg_node *node = NULL;
    struct vimg_opts *opts = NULL;
    int ret;

    (void)is_quiet;
    if (is_image_opts) {
        if (fmt) {
            tool_error("--image-opts and --format are mutually exclusive");
            return NULL;
        }
        opts = vimg_opts_new();
        if (!opts || vimg_opts_parse(opts, filename, NULL, &err) < 0) {
            tool_error("%s", err.msg);
            vimg_opts_free(opts);
            return NULL;
        }
        ret = vimg_open(&node, NULL, NULL, opts, flags, &err);
    } else {
        ret = vimg_open(&node, filename, fmt, NULL, flags, &err);
    }
    vimg_opts_free(opts);
    if (ret < 0) {
        tool_error_err(&err, "Could not open '%s': ", filename);
        return NULL;
    }
    return node;
}

bool
img_snapshot_param_parse(struct img_snapshot_param *p, const char *value)
{
    struct vimg_error err = { 0 };
    struct vimg_opts *o;
    char key[256];
    bool is_ok;

    img_snapshot_param_free(p);
    p->param = value;
    p->is_dotted = strncmp(value, "snapshot.", 9) == 0;
    if (!p->is_dotted)
        return true;
    if (!(o = vimg_opts_new()))
        return false;
    is_ok = vimg_opts_parse(o, value, NULL, &err) == 0;
    if (is_ok) {
        const char *id, *name;

        vimg_opts_get_dict(o, "snapshot");
        id = vimg_opts_get(o, "snapshot.id");
        name = vimg_opts_get(o, "snapshot.name");
        p->id = id ? strdup(id) : NULL;
        p->name = name ? strdup(name) : NULL;
        if (vimg_opts_find_unused(o, key, sizeof(key))) {
            vimg_error_set(&err, EINVAL, "Invalid parameter '%s'", key);
            is_ok = false;
        }
    }
    vimg_opts_free(o);
    if (!is_ok) {
        tool_error("%s", err.msg);
        tool_error("Failed in parsing snapshot param '%s'", value);
    }
    return is_ok;
}

void
img_snapshot_param_set_bare(struct img_snapshot_param *p, const char *value)
{
    img_snapshot_param_free(p);
    p->param = value;
}

bool
img_snapshot_param_load(const struct img_snapshot_param *p, struct vimg_node *node)
{
    struct vimg_error err = { 0 };
    int ret;

    if (p->is_dotted) {
        ret = vimg_snapshot_load_tmp(node, p->id, p->name, &err);
    } else {
        /* A bare value is an id, else a name. */
        ret = vimg_snapshot_load_tmp(node, p->param, NULL, &err);
        if (ret == -ENOENT) {
            err = (struct vimg_error){ 0 };
            ret = vimg_snapshot_load_tmp(node, NULL, p->param, &err);
        }
    }
    if (ret < 0)
        tool_error("Failed to load snapshot: %s", err.msg);
    return ret == 0;
}

void
img_snapshot_param_free(struct img_snapshot_param *p)
{
    free(p->id);
    free(p->name);
    *p = (struct img_snapshot_param){ 0 };
}
