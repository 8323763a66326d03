/*
 * Checks shared by the options fuzz targets: every entry of a tree is
 * reachable by its dotted path, typed getters agree with the raw parsers,
 * and the tree survives to_json, merge and dup unchanged.
 */
#ifndef VIMG_FUZZ_COMMON_H
#define VIMG_FUZZ_COMMON_H

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <vimg/opts.h>

#define FUZZ_CHECK(cond)                                                        \
    do {                                                                        \
        if (!(cond)) {                                                          \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__,   \
                    #cond);                                                     \
            abort();                                                            \
        }                                                                       \
    } while (0)

static const char *const fuzz_enum_values[] = { "threads", "native", "io_uring", NULL };

/* prefix is NULL at the top: an empty key is a path component too. */
static char *
fuzz_join(const char *prefix, const char *key)
{
    size_t len = (prefix ? strlen(prefix) : 0) + strlen(key) + 2;
    char *path = malloc(len);

    FUZZ_CHECK(path != NULL);
    snprintf(path, len, "%s%s%s", prefix ? prefix : "", prefix ? "." : "", key);
    return path;
}

static void
fuzz_check_leaf(struct vimg_opts *root, const char *path, const char *value)
{
    /* Messages are cut at VIMG_ERROR_MSG_MAX: a long path may not fit. */
    bool is_long = strlen(path) + strlen(value) > VIMG_ERROR_MSG_MAX - 100;
    struct vimg_error err;
    uint64_t n, parsed;
    bool b;
    int index;

    FUZZ_CHECK(strcmp(vimg_opts_peek(root, path), value) == 0);
    FUZZ_CHECK(vimg_opts_has(root, path));
    if (vimg_opts_get_size(root, path, 0, &n, &err) == 0)
        FUZZ_CHECK(vimg_parse_size(value, &parsed) == 0 && parsed == n);
    else
        FUZZ_CHECK(err.errnum == EINVAL && (is_long || strstr(err.msg, path) != NULL));
    if (vimg_opts_get_bool(root, path, false, &b, &err) < 0)
        FUZZ_CHECK(err.errnum == EINVAL && (is_long || strstr(err.msg, "expects 'on' or 'off'")));
    if (vimg_opts_get_number(root, path, 0, &n, &err) < 0)
        FUZZ_CHECK(err.errnum == EINVAL);
    if (vimg_opts_get_enum(root, path, fuzz_enum_values, 0, &index, &err) == 0)
        FUZZ_CHECK(strcmp(fuzz_enum_values[index], value) == 0);
    else
        FUZZ_CHECK(err.errnum == EINVAL && strstr(err.msg, "invalid parameter value: "));
    FUZZ_CHECK(strcmp(vimg_opts_get(root, path), value) == 0);
}

/* Reads every entry of dict (at prefix in root, NULL at the top) through root's getters. */
static void
fuzz_walk(struct vimg_opts *root, struct vimg_opts *dict, const char *prefix)
{
    for (size_t i = 0; i < vimg_opts_count(dict); i++) {
        char *path = fuzz_join(prefix, vimg_opts_key_at(dict, i));
        struct vimg_opts *sub = vimg_opts_dict_at(dict, i);

        if (sub) {
            FUZZ_CHECK(vimg_opts_get_dict(root, path) == sub);
            FUZZ_CHECK(vimg_opts_get(root, path) == NULL);
            fuzz_walk(root, sub, path);
        } else {
            fuzz_check_leaf(root, path, vimg_opts_value_at(dict, i));
        }
        free(path);
    }
}

static bool
fuzz_has_empty_dict(const struct vimg_opts *dict)
{
    for (size_t i = 0; i < vimg_opts_count(dict); i++) {
        struct vimg_opts *sub = vimg_opts_dict_at(dict, i);
        if (sub && (vimg_opts_count(sub) == 0 || fuzz_has_empty_dict(sub)))
            return true;
    }
    return false;
}

/*
 * Reads every entry, then checks that dup, merge and the JSON round trip give
 * the same tree. to_json gives NULL when jansson refuses a key or value that
 * is not UTF-8; the round trip is skipped then.
 */
static void
fuzz_check_tree(struct vimg_opts *opts)
{
    struct vimg_opts *copy, *merged, *reparsed;
    struct vimg_error err;
    char *json, *json2;
    char key[64];

    if (!vimg_opts_is_empty(opts))
        FUZZ_CHECK(vimg_opts_find_unused(opts, key, sizeof(key)));
    fuzz_walk(opts, opts, NULL);
    FUZZ_CHECK(!vimg_opts_find_unused(opts, key, sizeof(key)));
    vimg_opts_mark_unused(opts);

    json = vimg_opts_to_json(opts);
    copy = vimg_opts_dup(opts);
    merged = vimg_opts_new();
    FUZZ_CHECK(copy && merged);
    FUZZ_CHECK(vimg_opts_merge(merged, opts, &err) == 0);
    FUZZ_CHECK(vimg_opts_merge(copy, opts, &err) == 0);
    if (json && !fuzz_has_empty_dict(opts)) {
        reparsed = vimg_opts_new();
        FUZZ_CHECK(reparsed != NULL);
        FUZZ_CHECK(vimg_opts_parse_json(reparsed, json, &err) == 0);
        json2 = vimg_opts_to_json(reparsed);
        FUZZ_CHECK(json2 && strcmp(json, json2) == 0);
        free(json2);
        json2 = vimg_opts_to_json(merged);
        FUZZ_CHECK(json2 && strcmp(json, json2) == 0);
        free(json2);
        json2 = vimg_opts_to_json(copy);
        FUZZ_CHECK(json2 && strcmp(json, json2) == 0);
        free(json2);
        vimg_opts_free(reparsed);
    }
    free(json);
    vimg_opts_free(merged);
    vimg_opts_free(copy);
}

/* Deletes every top-level entry by name; the tree must end up empty. */
static void
fuzz_check_del(struct vimg_opts *opts)
{
    while (vimg_opts_count(opts) > 0) {
        char *key = strdup(vimg_opts_key_at(opts, 0));

        FUZZ_CHECK(key != NULL && strchr(key, '.') == NULL);
        FUZZ_CHECK(vimg_opts_del(opts, key));
        FUZZ_CHECK(!vimg_opts_has(opts, key));
        FUZZ_CHECK(!vimg_opts_del(opts, key));
        free(key);
    }
    FUZZ_CHECK(vimg_opts_is_empty(opts));
}

#endif
