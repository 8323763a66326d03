/*
 * Image creation: the merged schema of a format's and its protocol's
 * creation options (for `-o help`, validation and the "Formatting" line),
 * and the call into the drivers.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/driver.h"

#define MAX_DESCS 64

struct desc_list {
    const struct vimg_opt_desc *descs[MAX_DESCS];
    size_t n_descs;
};

static void
desc_list_add(struct desc_list *list, const struct vimg_opt_desc *descs)
{
    for (; descs && descs->name; descs++) {
        bool is_dup = false;
        for (size_t i = 0; i < list->n_descs; i++)
            if (strcmp(list->descs[i]->name, descs->name) == 0)
                is_dup = true;
        if (!is_dup && list->n_descs < MAX_DESCS)
            list->descs[list->n_descs++] = descs;
    }
}

static const struct vimg_driver *
create_protocol(const char *filename)
{
    return filename ? vimg_protocol_guess(filename) : NULL;
}

static int
desc_list_build(struct desc_list *list, const char *format, const char *filename,
                const struct vimg_driver **drv_out, struct vimg_error *err)
{
    const struct vimg_driver *drv = vimg_driver_find(format);
    const struct vimg_driver *proto;

    memset(list, 0, sizeof(*list));
    if (!drv)
        return vimg_error_set(err, EINVAL, "Unknown file format '%s'", format);
    if (!drv->create)
        return vimg_error_set(err, ENOTSUP, "Format driver '%s' does not support image "
                              "creation", format);
    desc_list_add(list, drv->create_opts);
    proto = create_protocol(filename);
    if (proto && proto != drv && drv->kind == VIMG_DRIVER_FORMAT)
        desc_list_add(list, proto->create_opts);
    if (drv_out)
        *drv_out = drv;
    return 0;
}

static const struct vimg_opt_desc *
desc_find(const struct desc_list *list, const char *name)
{
    for (size_t i = 0; i < list->n_descs; i++)
        if (strcmp(list->descs[i]->name, name) == 0)
            return list->descs[i];
    return NULL;
}

static const char *
type_text(enum vimg_opt_type type)
{
    switch (type) {
    case VIMG_OPT_BOOL: return "bool (on/off)";
    case VIMG_OPT_SIZE: return "size";
    case VIMG_OPT_NUMBER: return "num";
    case VIMG_OPT_STRING: break;
    }
    return "str";
}

static int
desc_cmp(const void *a, const void *b)
{
    const struct vimg_opt_desc *const *x = a, *const *y = b;

    return strcmp((*x)->name, (*y)->name);
}

int
vimg_create_help(const char *format, const char *filename, char **text, struct vimg_error *err)
{
    struct desc_list list;
    char *buf = NULL;
    size_t len = 0;
    FILE *f;
    int ret;

    if ((ret = desc_list_build(&list, format, filename, NULL, err)) < 0)
        return ret;
    qsort(list.descs, list.n_descs, sizeof(list.descs[0]), desc_cmp);
    f = open_memstream(&buf, &len);
    if (!f)
        return vimg_error_set(err, ENOMEM, "Out of memory");
    if (filename)
        fprintf(f, "Supported options:\n");
    else
        fprintf(f, "Supported %s options:\n", format);
    for (size_t i = 0; i < list.n_descs; i++) {
        char name[128];
        snprintf(name, sizeof(name), "%s=<%s>", list.descs[i]->name,
                 type_text(list.descs[i]->type));
        fprintf(f, "  %-22s - %s\n", name, list.descs[i]->help);
    }
    if (!filename)
        fprintf(f, "\nThe protocol level may support further options.\n"
                   "Specify the target filename to include those options.\n");
    fclose(f);
    *text = buf;
    return 0;
}

static int
validate_value(const struct vimg_opt_desc *d, const char *path, const char *value,
               struct vimg_error *err)
{
    uint64_t n;
    char *end;

    switch (d->type) {
    case VIMG_OPT_SIZE:
        if (vimg_parse_size(value, &n) < 0)
            return vimg_error_set(err, EINVAL,
                                  "Parameter '%s' expects a non-negative number below 2^64\n"
                                  "Optional suffix k, M, G, T, P or E means kilo-, mega-, "
                                  "giga-, tera-, peta-\nand exabytes, respectively.", path);
        break;
    case VIMG_OPT_BOOL:
        /* QEMU's boolean parser also takes yes/no, true/false and y/n. */
        if (strcmp(value, "on") && strcmp(value, "off") && strcmp(value, "yes") &&
            strcmp(value, "no") && strcmp(value, "true") && strcmp(value, "false") &&
            strcmp(value, "y") && strcmp(value, "n"))
            return vimg_error_set(err, EINVAL, "Parameter '%s' expects 'on' or 'off'", path);
        break;
    case VIMG_OPT_NUMBER:
        n = strtoull(value, &end, 0);
        (void)n;
        if (!*value || *end || *value == '-')
            return vimg_error_set(err, EINVAL, "Parameter '%s' expects a number", path);
        break;
    case VIMG_OPT_STRING:
        break;
    }
    return 0;
}

static int
validate_level(const struct desc_list *list, struct vimg_opts *opts, const char *prefix,
               struct vimg_error *err)
{
    for (size_t i = 0; i < vimg_opts_count(opts); i++) {
        struct vimg_opts *dict = vimg_opts_dict_at(opts, i);
        const struct vimg_opt_desc *d;
        char path[256];
        int ret;

        snprintf(path, sizeof(path), "%s%s", prefix, vimg_opts_key_at(opts, i));
        if (dict) {
            char sub[256];
            if (strlen(path) + 2 > sizeof(sub))
                continue;
            strcpy(sub, path);
            strcat(sub, ".");
            if ((ret = validate_level(list, dict, sub, err)) < 0)
                return ret;
            continue;
        }
        if (!(d = desc_find(list, path)))
            return vimg_error_set(err, EINVAL, "Invalid parameter '%s'", path);
        if ((ret = validate_value(d, path, vimg_opts_value_at(opts, i), err)) < 0)
            return ret;
    }
    return 0;
}

int
vimg_create_validate(const char *format, const char *filename, struct vimg_opts *opts,
                     struct vimg_error *err)
{
    struct desc_list list;
    int ret;

    if ((ret = desc_list_build(&list, format, filename, NULL, err)) < 0)
        return ret;
    return validate_level(&list, opts, "", err);
}

char *
vimg_create_describe(const char *format, const char *filename, const struct vimg_opts *opts)
{
    struct desc_list list;
    char *buf = NULL;
    size_t len = 0;
    FILE *f;

    if (desc_list_build(&list, format, filename, NULL, NULL) < 0)
        return NULL;
    f = open_memstream(&buf, &len);
    if (!f)
        return NULL;
    fprintf(f, "fmt=%s", format);
    for (size_t i = 0; i < list.n_descs; i++) {
        const struct vimg_opt_desc *d = list.descs[i];
        const char *v = vimg_opts_peek(opts, d->name);
        uint64_t n;

        if (!v)
            v = d->def;
        if (!v)
            continue;
        if (d->type == VIMG_OPT_SIZE && vimg_parse_size(v, &n) == 0)
            fprintf(f, " %s=%" PRIu64, d->name, n);
        else
            fprintf(f, " %s=%s", d->name, v);
    }
    fclose(f);
    return buf;
}

int
vimg_create_file(const char *filename, struct vimg_opts *opts, struct vimg_error *err)
{
    const struct vimg_driver *proto = vimg_protocol_guess(filename);
    struct vimg_opts *proto_opts;
    int ret = 0;

    if (!proto->create)
        return vimg_error_set(err, ENOTSUP, "Protocol driver '%s' does not support image "
                              "creation", proto->name);
    proto_opts = vimg_opts_new();
    if (!proto_opts)
        return vimg_error_set(err, ENOMEM, "Out of memory");
    for (const struct vimg_opt_desc *d = proto->create_opts; d && d->name && ret == 0; d++) {
        const char *v = vimg_opts_peek(opts, d->name);
        if (v)
            ret = vimg_opts_set(proto_opts, d->name, v, err);
    }
    if (ret == 0)
        ret = proto->create(filename, proto_opts, err);
    vimg_opts_free(proto_opts);
    return ret;
}

int
vimg_create_file_empty(const char *filename, struct vimg_opts *opts, struct vimg_error *err)
{
    const struct vimg_driver *proto = vimg_protocol_guess(filename);
    struct vimg_opts *o = vimg_opts_new();
    int ret = 0;

    if (!o)
        return vimg_error_set(err, ENOMEM, "Out of memory");
    for (const struct vimg_opt_desc *d = proto->create_opts; d && d->name && ret == 0; d++) {
        const char *v = vimg_opts_peek(opts, d->name);
        if (v && strcmp(d->name, "size") != 0 && strcmp(d->name, "preallocation") != 0)
            ret = vimg_opts_set(o, d->name, v, err);
    }
    if (ret == 0)
        ret = vimg_opts_set(o, "size", "0", err);
    if (ret == 0)
        ret = vimg_create_file(filename, o, err);
    vimg_opts_free(o);
    return ret;
}

int
vimg_create(const char *filename, const char *format, struct vimg_opts *opts,
            struct vimg_error *err)
{
    const struct vimg_driver *drv;
    struct desc_list list;
    int ret;

    vimg_error_clear(err);
    if ((ret = desc_list_build(&list, format, filename, &drv, err)) < 0)
        return ret;
    if ((ret = validate_level(&list, opts, "", err)) < 0)
        return ret;
    return drv->create(filename, opts, err);
}
