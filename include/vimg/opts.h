/*
 * The options tree: a nested dictionary of strings that feeds every open and
 * create. "a.b=c" and {"a": {"b": "c"}} mean the same thing. Keys are QEMU's.
 */
#ifndef VIMG_OPTS_H
#define VIMG_OPTS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <vimg/error.h>

struct vimg_opts;

struct vimg_opts *vimg_opts_new(void);
void vimg_opts_free(struct vimg_opts *opts);
struct vimg_opts *vimg_opts_dup(const struct vimg_opts *opts);

/*
 * Parses "key=value,a.b=c" (",," stands for a comma inside a value) into
 * opts. A first element without '=' is the value of implied_key when that is
 * not NULL; later bare elements mean "key=on".
 */
int vimg_opts_parse(struct vimg_opts *opts, const char *str, const char *implied_key,
                    struct vimg_error *err);
/* Parses a JSON object (the text after "json:") into opts. */
int vimg_opts_parse_json(struct vimg_opts *opts, const char *json, struct vimg_error *err);

/* Sets a dotted path; fails with EINVAL when a prefix of it holds a string. */
int vimg_opts_set(struct vimg_opts *opts, const char *path, const char *value,
                  struct vimg_error *err);
/* Sets path only when it is absent. */
int vimg_opts_set_default(struct vimg_opts *opts, const char *path, const char *value,
                          struct vimg_error *err);
/* Merges every entry of src into dst, src winning; src is left unchanged. */
int vimg_opts_merge(struct vimg_opts *dst, const struct vimg_opts *src, struct vimg_error *err);
bool vimg_opts_del(struct vimg_opts *opts, const char *path);
/* Like vimg_opts_set, remembering that the value was a JSON number. */
int vimg_opts_set_number(struct vimg_opts *opts, const char *path, const char *value,
                         struct vimg_error *err);
bool vimg_opts_is_number(const struct vimg_opts *opts, const char *path);

/* Returns the string at path and marks it used, or NULL (also when it is a dict). */
const char *vimg_opts_get(struct vimg_opts *opts, const char *path);
/* Like vimg_opts_get without marking it used. */
const char *vimg_opts_peek(const struct vimg_opts *opts, const char *path);
/* The dictionary at path, marked used, or NULL. */
struct vimg_opts *vimg_opts_get_dict(struct vimg_opts *opts, const char *path);
bool vimg_opts_has(const struct vimg_opts *opts, const char *path);
bool vimg_opts_is_empty(const struct vimg_opts *opts);

/* Typed getters: *out = def when the key is absent. The error text is QEMU's. */
int vimg_opts_get_size(struct vimg_opts *opts, const char *path, uint64_t def, uint64_t *out,
                       struct vimg_error *err);
int vimg_opts_get_bool(struct vimg_opts *opts, const char *path, bool def, bool *out,
                       struct vimg_error *err);
int vimg_opts_get_number(struct vimg_opts *opts, const char *path, uint64_t def,
                         uint64_t *out, struct vimg_error *err);
/* values is NULL-terminated; *out is the index. */
int vimg_opts_get_enum(struct vimg_opts *opts, const char *path, const char *const *values,
                       int def, int *out, struct vimg_error *err);

/* Iteration over one level, in insertion order. */
size_t vimg_opts_count(const struct vimg_opts *opts);
const char *vimg_opts_key_at(const struct vimg_opts *opts, size_t index);
const char *vimg_opts_value_at(const struct vimg_opts *opts, size_t index);
struct vimg_opts *vimg_opts_dict_at(const struct vimg_opts *opts, size_t index);

/*
 * Finds the first entry that no getter used, descending into dicts that were
 * used; writes its dotted path into key. Returns false when all were used.
 */
bool vimg_opts_find_unused(const struct vimg_opts *opts, char *key, size_t key_size);
void vimg_opts_mark_unused(struct vimg_opts *opts);
/* Marks every key used: a child node has checked them under its own name. */
void vimg_opts_mark_used(struct vimg_opts *opts);

/* Renders as a JSON object text (malloc'd); strings stay strings. NULL when out of
 * memory or when a key or value is not UTF-8 (JSON cannot hold it). */
char *vimg_opts_to_json(const struct vimg_opts *opts);

/*
 * Size strings as QEMU reads them: decimal with an optional fraction and a
 * suffix (b B k K m M g G t T p P e E, powers of 1024), or 0x hex.
 * Returns 0, -EINVAL (not a size) or -ERANGE (2^64 or more).
 */
int vimg_parse_size(const char *str, uint64_t *out);

#endif
