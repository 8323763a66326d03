/*
 * json:{...} pseudo-filenames into the options tree, and back. Scalars become
 * strings (numbers in decimal, booleans "on"/"off"); arrays become
 * dictionaries keyed "0", "1", ... as QEMU flattens them.
 */
#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include <vimg/opts.h>

static int json_put(struct vimg_opts *opts, const char *path, json_t *v,
                    struct vimg_error *err);

/*
 * The dotted path of a member; prefix is NULL at the top level, where an
 * empty key is still a path component ({"": {"a": 1}} is ".a").
 */
static char *
json_member_path(const char *prefix, const char *key)
{
    size_t len = (prefix ? strlen(prefix) + 1 : 0) + strlen(key) + 1;
    char *path = malloc(len);

    if (path)
        snprintf(path, len, "%s%s%s", prefix ? prefix : "", prefix ? "." : "", key);
    return path;
}

static int
json_put_member(struct vimg_opts *opts, const char *prefix, const char *key, json_t *v,
                struct vimg_error *err)
{
    char *path = json_member_path(prefix, key);
    int ret;

    if (!path)
        return vimg_error_set(err, ENOMEM, "Out of memory");
    ret = json_put(opts, path, v, err);
    free(path);
    return ret;
}

static int
json_put_container(struct vimg_opts *opts, const char *prefix, json_t *v,
                   struct vimg_error *err)
{
    char index[24];
    int ret = 0;

    if (json_is_object(v)) {
        const char *key;
        json_t *child;
        json_object_foreach(v, key, child) {
            if ((ret = json_put_member(opts, prefix, key, child, err)) < 0)
                break;
        }
    } else {
        size_t i;
        json_t *child;
        json_array_foreach(v, i, child) {
            snprintf(index, sizeof(index), "%zu", i);
            if ((ret = json_put_member(opts, prefix, index, child, err)) < 0)
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

/*
 * QEMU's JSON parser words its errors differently from jansson's; this maps
 * jansson's texts onto QEMU's for the common mistakes. A bad token is named
 * as QEMU names it: "invalid keyword 'tru'", "stray '@'".
 */
static void
json_error_text(const char *text, const json_error_t *je, char *buf, size_t size)
{
    const char *near = strstr(je->text, "near '");
    const char *msg = "JSON parse error, expecting value";

    if (strstr(je->text, "end of file expected"))
        msg = "Expecting at most one JSON value";
    else if (text[strspn(text, " \t\n\r")] == '\0')
        msg = "Expecting a JSON value";
    else if (strstr(je->text, "premature end of input") || strstr(je->text, "end of file"))
        msg = "JSON parse error, premature EOI";
    else if (strstr(je->text, "':' expected"))
        msg = "JSON parse error, missing : in object pair";
    else if (strstr(je->text, "']' expected"))
        msg = "JSON parse error, expected separator in list";
    else if (strstr(je->text, "duplicate object key"))
        msg = "JSON parse error, duplicate key";
    else if (strstr(je->text, "invalid escape"))
        msg = "JSON parse error, invalid escape sequence in string";
    if (strstr(je->text, "invalid token") && near) {
        near += strlen("near '");
        snprintf(buf, size, "JSON parse error, %s '%.*s'",
                 isalpha((unsigned char)*near) ? "invalid keyword" : "stray",
                 (int)strcspn(near, "'"), near);
        return;
    }
    snprintf(buf, size, "%s", msg);
}

int
vimg_opts_parse_json(struct vimg_opts *opts, const char *text, struct vimg_error *err)
{
    json_error_t je;
    char why[JSON_ERROR_TEXT_LENGTH + 64];
    json_t *root;
    int ret;

    root = json_loads(text, JSON_REJECT_DUPLICATES | JSON_DECODE_ANY | JSON_ALLOW_NUL, &je);
    if (!root) {
        json_error_text(text, &je, why, sizeof(why));
        return vimg_error_set(err, EINVAL, "Could not parse the JSON options: %s", why);
    }
    if (!json_is_object(root)) {
        json_decref(root);
        return vimg_error_set(err, EINVAL, "Invalid JSON object given");
    }
    ret = json_put_container(opts, NULL, root, err);
    json_decref(root);
    return ret;
}

/* NULL when out of memory or when a key or value is not UTF-8 (jansson refuses it). */
static json_t *
opts_to_json_value(const struct vimg_opts *opts)
{
    json_t *obj = json_object();

    for (size_t i = 0; obj && i < vimg_opts_count(opts); i++) {
        struct vimg_opts *dict = vimg_opts_dict_at(opts, i);
        json_t *v = dict ? opts_to_json_value(dict)
                         : json_string(vimg_opts_value_at(opts, i));
        /* json_object_set_new takes v even when it fails. */
        if (!v || json_object_set_new(obj, vimg_opts_key_at(opts, i), v) < 0) {
            json_decref(obj);
            obj = NULL;
        }
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
