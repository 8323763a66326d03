/*
 * json:{...} pseudo-filenames into the options tree, and back. Scalars become
 * strings (numbers in decimal, booleans "on"/"off"); arrays become
 * dictionaries keyed "0", "1", ... as QEMU flattens them.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include <vimg/opts.h>

static int json_put(struct vimg_opts *opts, const char *path, json_t *v,
                    struct vimg_error *err);

static int
json_put_container(struct vimg_opts *opts, const char *prefix, json_t *v,
                   struct vimg_error *err)
{
    char path[1024];
    int ret = 0;

    if (json_is_object(v)) {
        const char *key;
        json_t *child;
        json_object_foreach(v, key, child) {
            snprintf(path, sizeof(path), "%s%s%s", prefix, *prefix ? "." : "", key);
            if ((ret = json_put(opts, path, child, err)) < 0)
                break;
        }
    } else {
        size_t i;
        json_t *child;
        json_array_foreach(v, i, child) {
            snprintf(path, sizeof(path), "%s%s%zu", prefix, *prefix ? "." : "", i);
            if ((ret = json_put(opts, path, child, err)) < 0)
                break;
        }
    }
    return ret;
}

static int
json_put(struct vimg_opts *opts, const char *path, json_t *v, struct vimg_error *err)
{
    char buf[64];

    switch (json_typeof(v)) {
    case JSON_OBJECT:
    case JSON_ARRAY:
        return json_put_container(opts, path, v, err);
    case JSON_STRING:
        return vimg_opts_set(opts, path, json_string_value(v), err);
    case JSON_INTEGER:
        snprintf(buf, sizeof(buf), "%" JSON_INTEGER_FORMAT, json_integer_value(v));
        return vimg_opts_set_number(opts, path, buf, err);
    case JSON_REAL:
        snprintf(buf, sizeof(buf), "%.17g", json_real_value(v));
        return vimg_opts_set(opts, path, buf, err);
    case JSON_TRUE:
        return vimg_opts_set(opts, path, "on", err);
    case JSON_FALSE:
        return vimg_opts_set(opts, path, "off", err);
    case JSON_NULL:
        return vimg_opts_set(opts, path, "", err);
    }
    return vimg_error_set(err, EINVAL, "Invalid JSON object given");
}

/* QEMU's JSON parser words its errors differently from jansson's. */
static const char *
json_error_text(const json_error_t *je)
{
    if (strstr(je->text, "end of file expected"))
        return "Expecting at most one JSON value";
    if (strstr(je->text, "premature end of input") || strstr(je->text, "end of file"))
        return "JSON parse error, premature EOI";
    if (strstr(je->text, "':' expected"))
        return "JSON parse error, missing : in object pair";
    if (strstr(je->text, "invalid token")) {
        return "JSON parse error, invalid keyword";
    }
    return "JSON parse error, expecting value";
}

int
vimg_opts_parse_json(struct vimg_opts *opts, const char *text, struct vimg_error *err)
{
    json_error_t je;
    json_t *root;
    int ret;

    root = json_loads(text, JSON_REJECT_DUPLICATES | JSON_DECODE_ANY | JSON_ALLOW_NUL, &je);
    if (!root)
        return vimg_error_set(err, EINVAL, "Could not parse the JSON options: %s",
                              json_error_text(&je));
    if (!json_is_object(root)) {
        json_decref(root);
        return vimg_error_set(err, EINVAL, "Invalid JSON object given");
    }
    ret = json_put_container(opts, "", root, err);
    json_decref(root);
    return ret;
}

static json_t *
opts_to_json_value(const struct vimg_opts *opts)
{
    json_t *obj = json_object();

    for (size_t i = 0; obj && i < vimg_opts_count(opts); i++) {
        struct vimg_opts *dict = vimg_opts_dict_at(opts, i);
        json_t *v = dict ? opts_to_json_value(dict)
                         : json_string(vimg_opts_value_at(opts, i));
        json_object_set_new(obj, vimg_opts_key_at(opts, i), v);
    }
    return obj;
}

char *
vimg_opts_to_json(const struct vimg_opts *opts)
{
    json_t *obj = opts_to_json_value(opts);
    char *text = obj ? json_dumps(obj, JSON_PRESERVE_ORDER | JSON_COMPACT) : NULL;

    json_decref(obj);
    return text;
}
