/*
 * The node graph: opening a format over its protocol (probing the format when
 * none is named), backing children, permissions and locking, creation.
 */
#include <errno.h>
#include <libgen.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <vimg/json.h>

#include "core/driver.h"

#define PROBE_BUF_SIZE 2048

static vimg_warning_fn warning_fn;

void
vimg_set_warning_handler(vimg_warning_fn fn)
{
    warning_fn = fn;
}

void
vimg_warn(const char *fmt, ...)
{
    char msg[1024];
    va_list ap;

    if (!warning_fn)
        return;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    warning_fn(msg);
}

static const char *const prealloc_names[] = { "off", "metadata", "falloc", "full", NULL };

int
vimg_prealloc_parse(const char *s, int *out, struct vimg_error *err)
{
    for (int i = 0; prealloc_names[i]; i++) {
        if (strcmp(s, prealloc_names[i]) == 0) {
            *out = i;
            return 0;
        }
    }
    return vimg_error_set(err, EINVAL, "invalid parameter value: %s", s);
}

const char *
vimg_prealloc_name(int mode)
{
    return mode >= 0 && mode < 4 ? prealloc_names[mode] : "off";
}

static struct vimg_node *
node_new(const struct vimg_driver *drv)
{
    struct vimg_node *node = calloc(1, sizeof(*node));

    if (!node)
        return NULL;
    node->drv = drv;
    node->request_alignment = 1;
    node->mem_alignment = 1;
    pthread_mutex_init(&node->rmw_lock, NULL);
    if (drv->state_size && !(node->state = calloc(1, drv->state_size))) {
        free(node);
        return NULL;
    }
    return node;
}

void
vimg_close(struct vimg_node *node)
{
    if (!node)
        return;
    if (node->drv && node->drv->close && node->state)
        node->drv->close(node);
    vimg_close(node->backing);
    vimg_close(node->data_file);
    vimg_close(node->file);
    pthread_mutex_destroy(&node->rmw_lock);
    free(node->state);
    free(node->filename);
    free(node->backing_filename);
    free(node->backing_format);
    free(node->full_backing_filename);
    json_decref(node->strong_opts);
    free(node);
}

/* Node-level options QEMU accepts on every node, consumed here. */
static int
node_read_common_opts(struct vimg_opts *opts, unsigned *flags, struct vimg_error *err)
{
    bool v;
    int ret;

    if ((ret = vimg_opts_get_bool(opts, "cache.direct", *flags & VIMG_OPEN_NOCACHE, &v,
                                  err)) < 0)
        return ret;
    *flags = v ? (*flags | VIMG_OPEN_NOCACHE) : (*flags & ~VIMG_OPEN_NOCACHE);
    if ((ret = vimg_opts_get_bool(opts, "cache.no-flush", *flags & VIMG_OPEN_NO_FLUSH, &v,
                                  err)) < 0)
        return ret;
    *flags = v ? (*flags | VIMG_OPEN_NO_FLUSH) : (*flags & ~VIMG_OPEN_NO_FLUSH);
    if ((ret = vimg_opts_get_bool(opts, "read-only", !(*flags & VIMG_OPEN_RDWR), &v, err)) < 0)
        return ret;
    if (v)
        *flags &= ~VIMG_OPEN_RDWR;
    if ((ret = vimg_opts_get_bool(opts, "force-share", *flags & VIMG_OPEN_FORCE_SHARE, &v,
                                  err)) < 0)
        return ret;
    if (v) {
        if (*flags & VIMG_OPEN_RDWR)
            return vimg_error_set(err, EINVAL,
                                  "force-share=on can only be used with read-only images");
        *flags |= VIMG_OPEN_FORCE_SHARE;
    }
    /* Accepted for compatibility; they do not change what vimg does. */
    vimg_opts_get(opts, "node-name");
    vimg_opts_get(opts, "auto-read-only");
    vimg_opts_get(opts, "discard");
    vimg_opts_get(opts, "detect-zeroes");
    vimg_opts_get(opts, "cache.writeback");
    return 0;
}

static int
node_reject_unused(struct vimg_node *node, struct vimg_opts *opts, struct vimg_error *err)
{
    char key[256];

    if (!vimg_opts_find_unused(opts, key, sizeof(key)))
        return 0;
    if (node->drv->kind == VIMG_DRIVER_PROTOCOL)
        return vimg_error_set(err, EINVAL, "Block protocol '%s' doesn't support the option '%s'",
                              node->drv->name, key);
    return vimg_error_set(err, EINVAL, "Block format '%s' does not support the option '%s'",
                          node->drv->name, key);
}

/* The protocol for a filename with no "driver": its URI prefix, a device, or "file". */
const struct vimg_driver *
vimg_protocol_guess(const char *filename)
{
    const struct vimg_driver *drv = vimg_protocol_for(filename);
    const struct vimg_driver *best = NULL;
    int best_score = 0;

    if (drv)
        return drv;
    for (size_t i = 0; (drv = vimg_driver_at(i)) != NULL; i++) {
        if (drv->probe_device) {
            int score = drv->probe_device(filename);
            if (score > best_score) {
                best_score = score;
                best = drv;
            }
        }
    }
    return best ? best : vimg_driver_find("file");
}

/*
 * A filename given as an option is not a filename string: as in QEMU, no URI
 * prefix picks its protocol (a device still does), and the drivers that parse
 * a string (QEMU's bdrv_parse_filename) never see it: the URL protocols open
 * from their other options and file/host_device keep a "file:" prefix. gluster
 * reads its "filename" option itself.
 */
static const char *const string_only_protocols[] = { "blkdebug", "iscsi", "nbd", "ssh", NULL };

static const struct vimg_driver *
protocol_guess(const char *name, bool is_string)
{
    const struct vimg_driver *drv, *best = NULL;
    int best_score = 0;

    if (is_string)
        return vimg_protocol_guess(name);
    for (size_t i = 0; (drv = vimg_driver_at(i)) != NULL; i++) {
        if (drv->probe_device) {
            int score = drv->probe_device(name);
            if (score > best_score) {
                best_score = score;
                best = drv;
            }
        }
    }
    return best ? best : vimg_driver_find("file");
}

static int
probe_format(struct vimg_node *file, const struct vimg_driver **out, struct vimg_error *err)
{
    uint8_t buf[PROBE_BUF_SIZE] = { 0 };
    const struct vimg_driver *drv, *best = NULL;
    int64_t len = vimg_node_length(file, err);
    int best_score = 0, ret;

    if (len < 0)
        return (int)len;
    if (len > 0) {
        ret = vimg_node_pread(file, 0, buf, (uint64_t)len < sizeof(buf) ? (uint64_t)len
                                                                        : sizeof(buf), 0, err);
        if (ret < 0)
            return vimg_error_set(err, -ret, "Could not read image for determining its format: "
                                  "%s", strerror(-ret));
    }
    for (size_t i = 0; (drv = vimg_driver_at(i)) != NULL; i++) {
        if (drv->kind == VIMG_DRIVER_FORMAT && drv->probe) {
            int score = drv->probe(buf, (size_t)len < sizeof(buf) ? (size_t)len : sizeof(buf),
                                   file->filename);
            if (score > best_score) {
                best_score = score;
                best = drv;
            }
        }
    }
    if (!best)
        return vimg_error_set(err, ENOTSUP, "Could not determine image format: "
                              "No compatible format found");
    *out = best;
    return 0;
}

static int node_open(struct vimg_node **out, struct vimg_opts *opts, const char *filename,
                     unsigned flags, struct vimg_error *err);

static int
node_open_protocol(struct vimg_node *node, struct vimg_opts *opts, const char *filename,
                   unsigned flags, struct vimg_error *err)
{
    const char *name = vimg_opts_peek(opts, "filename");
    size_t plen = strlen(node->drv->name);
    char *hidden = NULL;
    int ret;

    if (name) {
        /* The driver does not see it; left unused, it is refused once the open worked. */
        for (const char *const *p = string_only_protocols; *p; p++) {
            if (strcmp(node->drv->name, *p) == 0) {
                if (!(hidden = strdup(name)))
                    return vimg_error_set(err, ENOMEM, "Out of memory");
                vimg_opts_del(opts, "filename");
                name = NULL;
                break;
            }
        }
    } else if (filename) {
        /* The string's "file:" / "host_device:" prefix goes, as QEMU's parse drops it. */
        if ((strcmp(node->drv->name, "file") == 0 || strcmp(node->drv->name, "host_device") == 0)
            && strncmp(filename, node->drv->name, plen) == 0 && filename[plen] == ':')
            filename += plen + 1;
        if ((ret = vimg_opts_set(opts, "filename", filename, err)) < 0)
            return ret;
        name = filename;
    }
    if (!name && !node->drv->protocols)
        return vimg_error_set(err, EINVAL, "The '%s' block driver requires a file name",
                              node->drv->name);
    node->filename = strdup(name ? name : node->drv->name);
    if (!node->filename)
        ret = vimg_error_set(err, ENOMEM, "Out of memory");
    else
        ret = node->drv->open(node, opts, flags, err);
    if (ret == 0 && hidden && (ret = vimg_opts_set(opts, "filename", hidden, err)) < 0 &&
        node->drv->close)
        node->drv->close(node);
    free(hidden);
    return ret;
}

/*
 * Opens the "file" child. Its dictionary in opts is used in place, so that the
 * child marks the keys it reads and rejects the others under its own name.
 */
static int
node_open_file_child(struct vimg_node *node, struct vimg_opts *opts, const char *filename,
                     unsigned flags, struct vimg_error *err)
{
    struct vimg_opts *child_opts = vimg_opts_get_dict(opts, "file");
    const char *file_ref = vimg_opts_get(opts, "file");
    struct vimg_opts *own = NULL;
    int ret = 0;

    if (!child_opts && !file_ref && !filename) {
        if (node->drv)
            return vimg_error_set(err, EINVAL,
                                  "A block device must be specified for \"file\"");
        return vimg_error_set(err, EINVAL, "Must specify either driver or file");
    }
    if (!child_opts && !(child_opts = own = vimg_opts_new()))
        return vimg_error_set(err, ENOMEM, "Out of memory");
    if (file_ref)
        filename = file_ref;
    if (!vimg_opts_has(child_opts, "driver")) {
        const char *name = vimg_opts_peek(child_opts, "filename");
        if (name)
            ret = vimg_opts_set(child_opts, "driver", protocol_guess(name, false)->name, err);
        else if (filename)
            ret = vimg_opts_set(child_opts, "driver", protocol_guess(filename, true)->name, err);
    }
    if (ret == 0)
        ret = node_open(&node->file, child_opts, filename, flags, err);
    vimg_opts_free(own);
    return ret;
}

/*
 * The images whose backing files this thread is opening, outermost first: a
 * backing file that is one of them is a loop (QEMU recurses until it runs out
 * of file descriptors), and chains longer than this are refused.
 */
#define VIMG_MAX_BACKING_DEPTH 256
static __thread char *backing_stack[VIMG_MAX_BACKING_DEPTH];
static __thread unsigned backing_depth;

/* ELOOP when path (resolved) already is being opened as an image of this chain. */
static int
backing_check_loop(const char *self, const char *path, struct vimg_error *err)
{
    char *real = path ? realpath(path, NULL) : NULL;
    unsigned i;
    int ret = 0;

    if (backing_depth >= VIMG_MAX_BACKING_DEPTH - 1)
        ret = vimg_error_set(err, ELOOP, "Backing file chain is longer than %d images",
                             VIMG_MAX_BACKING_DEPTH);
    for (i = 0; real && ret == 0 && i < backing_depth; i++)
        if (backing_stack[i] && strcmp(backing_stack[i], real) == 0)
            ret = vimg_error_set(err, ELOOP, "Backing file '%s' creates an infinite loop.", path);
    if (real && ret == 0 && self && strcmp(self, real) == 0)
        ret = vimg_error_set(err, ELOOP, "Backing file '%s' creates an infinite loop.", path);
    free(real);
    return ret;
}

static int
node_open_backing(struct vimg_node *node, struct vimg_opts *opts, unsigned flags,
                  struct vimg_error *err)
{
    struct vimg_opts *backing_opts = vimg_opts_get_dict(opts, "backing");
    const char *backing_ref = vimg_opts_get(opts, "backing");
    struct vimg_opts *child_opts, *own = NULL;
    unsigned child_flags = (flags & ~(VIMG_OPEN_RDWR | VIMG_OPEN_RESIZE | VIMG_OPEN_NO_SHARE));
    int ret;

    if (backing_ref && *backing_ref == '\0')
        return 0;       /* "backing": null or "" means no backing file */
    if (!backing_opts && !node->backing_filename)
        return 0;
    if (node->backing_filename) {
        free(node->full_backing_filename);
        node->full_backing_filename = vimg_path_combine(node->filename, node->backing_filename);
        if (!node->full_backing_filename)
            return vimg_error_set(err, ENOMEM, "Out of memory");
    }
    if (flags & VIMG_OPEN_NO_BACKING)
        return 0;
    child_opts = backing_opts ? backing_opts : (own = vimg_opts_new());
    if (!child_opts)
        return vimg_error_set(err, ENOMEM, "Out of memory");
    ret = 0;
    if (node->backing_format && !vimg_opts_has(child_opts, "driver"))
        ret = vimg_opts_set(child_opts, "driver", node->backing_format, err);
    if (ret == 0) {
        const char *name = vimg_opts_has(child_opts, "file") ||
                           vimg_opts_has(child_opts, "filename")
                           ? NULL : node->full_backing_filename;
        char *self = realpath(node->filename, NULL);

        ret = backing_check_loop(self, name, err);
        if (ret == 0) {
            backing_stack[backing_depth++] = self;
            ret = node_open(&node->backing, child_opts, name, child_flags, err);
            backing_stack[--backing_depth] = NULL;
            /* A loop is said once, not behind one prefix per image of the chain. */
            if (ret < 0 && err->errnum != ELOOP)
                vimg_error_prefix(err, "Could not open backing file: ");
        }
        free(self);
    }
    vimg_opts_free(own);
    return ret;
}

/* Keeps the strong options the user gave, with their JSON types. */
static int
node_keep_strong_opts(struct vimg_node *node, const struct vimg_opts *opts,
                      struct vimg_error *err)
{
    for (const char *const *name = node->drv->strong_opts; name && *name; name++) {
        const char *v = vimg_opts_peek(opts, *name);
        json_t *j;
        if (!v)
            continue;
        if (!node->strong_opts && !(node->strong_opts = json_object()))
            return vimg_error_set(err, ENOMEM, "Out of memory");
        j = vimg_opts_is_number(opts, *name) ? json_integer(strtoll(v, NULL, 10))
                                              : json_string(v);
        json_object_set_new(node->strong_opts, *name, j);
    }
    return 0;
}

/* The json:{...} description of a node: driver, strong options, file child. */
static json_t *
node_json_desc(const struct vimg_node *node)
{
    json_t *desc = json_object();
    const char *key;
    json_t *v;

    /* A protocol QEMU names by its options (iscsi) already is a description. */
    if (node->drv->kind == VIMG_DRIVER_PROTOCOL && strncmp(node->filename, "json:", 5) == 0) {
        json_decref(desc);
        return json_loads(node->filename + 5, 0, NULL);
    }
    json_object_set_new(desc, "driver", json_string(node->drv->name));
    if (node->drv->kind == VIMG_DRIVER_PROTOCOL) {
        json_object_set_new(desc, "filename", json_string(node->filename));
        return desc;
    }
    json_object_foreach(node->strong_opts, key, v)
        json_object_set(desc, key, v);
    if (node->file)
        json_object_set_new(desc, "file", node_json_desc(node->file));
    return desc;
}

/*
 * A format node is named like its file when nothing else changes what the
 * guest sees; otherwise, as in QEMU, by a json: description of the graph.
 */
static int
node_refresh_filename(struct vimg_node *node, struct vimg_error *err)
{
    json_t *desc;
    char *text, *name;

    if (!node->strong_opts && node->file && node->file->drv->kind == VIMG_DRIVER_PROTOCOL &&
        strncmp(node->file->filename, "json:", 5) != 0)
        return 0;
    desc = node_json_desc(node);
    text = desc ? vimg_json_dumps(desc, false) : NULL;
    json_decref(desc);
    if (!text || asprintf(&name, "json:%s", text) < 0) {
        free(text);
        return vimg_error_set(err, ENOMEM, "Out of memory");
    }
    free(text);
    free(node->filename);
    node->filename = name;
    return 0;
}

static int
node_open(struct vimg_node **out, struct vimg_opts *opts, const char *filename, unsigned flags,
          struct vimg_error *err)
{
    const char *drv_name;
    const struct vimg_driver *drv = NULL;
    struct vimg_node *node = NULL;
    struct vimg_node *file = NULL;
    bool is_probed = false;
    int ret;

    if ((ret = node_read_common_opts(opts, &flags, err)) < 0)
        return ret;
    drv_name = vimg_opts_get(opts, "driver");
    if (drv_name && !(drv = vimg_driver_find(drv_name)))
        return vimg_error_set(err, EINVAL, "Unknown driver '%s'", drv_name);
    if (drv && drv->kind == VIMG_DRIVER_PROTOCOL) {
        if (!(node = node_new(drv)))
            return vimg_error_set(err, ENOMEM, "Out of memory");
        node->open_flags = flags;
        node->is_read_only = !(flags & VIMG_OPEN_RDWR);
        if ((ret = node_open_protocol(node, opts, filename, flags, err)) < 0)
            goto fail_no_close;
        goto opened;
    }
    /* A format (named or probed) over a file child. */
    {
        struct vimg_node tmp = { .drv = drv };
        ret = node_open_file_child(&tmp, opts, filename, flags, err);
        file = tmp.file;
        if (ret < 0)
            return ret;
    }
    if (!drv) {
        if ((ret = probe_format(file, &drv, err)) < 0)
            goto fail_file;
        is_probed = true;
    }
    if (!(node = node_new(drv))) {
        ret = vimg_error_set(err, ENOMEM, "Out of memory");
        goto fail_file;
    }
    node->file = file;
    node->open_flags = flags;
    node->is_read_only = !(flags & VIMG_OPEN_RDWR);
    node->is_probed_raw = is_probed && strcmp(drv->name, "raw") == 0;
    node->filename = strdup(file->filename);
    if (!node->filename) {
        ret = vimg_error_set(err, ENOMEM, "Out of memory");
        goto fail_no_close;
    }
    if ((ret = drv->open(node, opts, flags, err)) < 0)
        goto fail_no_close;
    if ((ret = node_keep_strong_opts(node, opts, err)) < 0 ||
        (ret = node_refresh_filename(node, err)) < 0)
        goto fail;
    if (node->is_probed_raw && (flags & VIMG_OPEN_RDWR))
        vimg_warn("WARNING: Image format was not specified for '%s' and probing guessed raw.\n"
                  "         Automatically detecting the format is dangerous for raw images, "
                  "write operations on block 0 will be restricted.\n"
                  "         Specify the 'raw' format explicitly to remove the restrictions.",
                  node->filename);
    /* The block-0 check must see whole sectors, so a probed raw image is written by sector,
     * as QEMU's is: a write into the last partial sector fills that sector. */
    if (node->is_probed_raw && (flags & VIMG_OPEN_RDWR) && node->request_alignment < 512)
        node->request_alignment = 512;
    if (drv->supports_backing && (ret = node_open_backing(node, opts, flags, err)) < 0)
        goto fail;
opened:
    if ((ret = node_reject_unused(node, opts, err)) < 0)
        goto fail;
    *out = node;
    return 0;
fail_file:
    vimg_close(file);
    return ret;
fail_no_close:
    /* open failed: the driver released its own state; close only children. */
    if (node) {
        free(node->state);
        node->state = NULL;
    }
fail:
    vimg_close(node);
    return ret;
}

/*
 * Permissions for the file child of a format: a format needs its storage for
 * reading (and writing and resizing when writable), and lets nobody else
 * write or resize it under its metadata, unless sharing is forced.
 */
static void
perms_for_storage(const struct vimg_node *node, unsigned perm, unsigned shared,
                  unsigned *child_perm, unsigned *child_shared)
{
    if (node->drv->is_filter) {
        *child_perm = perm;
        *child_shared = shared;
        return;
    }
    *child_perm = VIMG_PERM_CONSISTENT_READ;
    if (!node->is_read_only)
        *child_perm |= VIMG_PERM_WRITE | VIMG_PERM_RESIZE;
    *child_shared = (shared & ~(VIMG_PERM_WRITE | VIMG_PERM_RESIZE)) | VIMG_PERM_WRITE_UNCHANGED;
    if (node->open_flags & VIMG_OPEN_FORCE_SHARE)
        *child_shared = VIMG_PERM_ALL;
}

/*
 * Writing a file whose end is not aligned (O_DIRECT) means rounding the last
 * block up, which changes its size: that needs the resize permission.
 */
static int
node_check_write_alignment(struct vimg_node *node, unsigned perm, struct vimg_error *err)
{
    int64_t len;

    if (node->drv->kind != VIMG_DRIVER_PROTOCOL || node->request_alignment <= 1 ||
        (node->open_flags & VIMG_OPEN_REOPEN) ||
        !(perm & VIMG_PERM_WRITE) || (perm & VIMG_PERM_RESIZE) || !node->drv->length)
        return 0;
    len = node->drv->length(node, err);
    if (len < 0)
        return (int)len;
    /* QEMU compares its length in whole sectors, so a last partial sector is no obstacle. */
    if (((len + 511) & ~(int64_t)511) % node->request_alignment)
        return vimg_error_set(err, EINVAL, "Cannot get 'write' permission without 'resize': "
                              "Image size is not a multiple of request alignment");
    return 0;
}

static int
node_set_perm(struct vimg_node *node, unsigned perm, unsigned shared, struct vimg_error *err)
{
    unsigned child_perm, child_shared;
    int ret;

    if (!node)
        return 0;
    node->perm = perm;
    node->shared_perm = shared;
    if ((ret = node_check_write_alignment(node, perm, err)) < 0)
        return ret;
    if (node->drv->set_perm && (ret = node->drv->set_perm(node, perm, shared, err)) < 0)
        return ret;
    perms_for_storage(node, perm, shared, &child_perm, &child_shared);
    if ((ret = node_set_perm(node->file, child_perm, child_shared, err)) < 0)
        return ret;
    if ((ret = node_set_perm(node->data_file, child_perm, child_shared, err)) < 0)
        return ret;
    /* A backing file is only read, and others may do what they like with it. */
    return node_set_perm(node->backing, VIMG_PERM_CONSISTENT_READ, VIMG_PERM_ALL, err);
}

static void
root_perms(unsigned flags, unsigned *perm, unsigned *shared)
{
    *perm = VIMG_PERM_CONSISTENT_READ;
    if (flags & VIMG_OPEN_RDWR)
        *perm |= VIMG_PERM_WRITE;
    if (flags & VIMG_OPEN_RESIZE)
        *perm |= VIMG_PERM_RESIZE;
    *shared = VIMG_PERM_ALL;
    if (flags & VIMG_OPEN_NO_SHARE)
        *shared = VIMG_PERM_CONSISTENT_READ | VIMG_PERM_WRITE_UNCHANGED;
    if (flags & VIMG_OPEN_NO_SHARE_RESIZE)
        *shared &= ~VIMG_PERM_RESIZE;
    if (flags & VIMG_OPEN_FORCE_SHARE)
        *shared = VIMG_PERM_ALL;
}

static int
opts_prepare(struct vimg_opts **out, const char *filename, const char *format,
             const struct vimg_opts *opts, struct vimg_error *err)
{
    struct vimg_opts *o = vimg_opts_new();
    int ret = 0;

    if (!o)
        return vimg_error_set(err, ENOMEM, "Out of memory");
    if (filename && strncmp(filename, "json:", 5) == 0)
        ret = vimg_opts_parse_json(o, filename + 5, err);
    if (ret == 0 && opts)
        ret = vimg_opts_merge(o, opts, err);
    if (ret == 0 && format) {
        const char *d = vimg_opts_peek(o, "driver");
        if (d && strcmp(d, format) != 0)
            ret = vimg_error_set(err, EINVAL, "Cannot use image format '%s' with driver '%s'",
                                 format, d);
        else
            ret = vimg_opts_set(o, "driver", format, err);
    }
    if (ret < 0) {
        vimg_opts_free(o);
        return ret;
    }
    *out = o;
    return 0;
}

int
vimg_open(struct vimg_node **out, const char *filename, const char *format,
          const struct vimg_opts *opts, unsigned flags, struct vimg_error *err)
{
    struct vimg_opts *o;
    struct vimg_node *node = NULL;
    unsigned perm, shared;
    int ret;

    vimg_error_clear(err);
    if ((flags & VIMG_OPEN_FORCE_SHARE) && (flags & VIMG_OPEN_RDWR))
        return vimg_error_set(err, EINVAL,
                              "force-share=on can only be used with read-only images");
    if ((ret = opts_prepare(&o, filename, format, opts, err)) < 0)
        return ret;
    if (filename && strncmp(filename, "json:", 5) == 0)
        filename = NULL;
    if (flags & VIMG_OPEN_PROTOCOL && !vimg_opts_has(o, "driver") && filename)
        ret = vimg_opts_set(o, "driver", vimg_protocol_guess(filename)->name, err);
    if (ret == 0)
        ret = node_open(&node, o, filename, flags, err);
    vimg_opts_free(o);
    if (ret < 0)
        return ret;
    root_perms(node->open_flags, &perm, &shared);
    if ((ret = node_set_perm(node, perm, shared, err)) < 0) {
        vimg_close(node);
        return ret;
    }
    node->cached_length = vimg_node_length(node, err);
    if (node->cached_length < 0) {
        ret = (int)node->cached_length;
        vimg_close(node);
        return ret;
    }
    node->is_root = true;
    *out = node;
    return 0;
}

int
vimg_open_child(struct vimg_node **out, struct vimg_node *parent, const char *role,
                const char *filename, const char *format, struct vimg_opts *opts,
                unsigned flags, struct vimg_error *err)
{
    struct vimg_opts *o;
    int ret;

    (void)role;
    if ((ret = opts_prepare(&o, filename, format, opts, err)) < 0)
        return ret;
    if ((flags & VIMG_OPEN_PROTOCOL) && !vimg_opts_has(o, "driver")) {
        const char *name = vimg_opts_peek(o, "filename");
        if (name)
            ret = vimg_opts_set(o, "driver", protocol_guess(name, false)->name, err);
        else if (filename)
            ret = vimg_opts_set(o, "driver", protocol_guess(filename, true)->name, err);
        if (ret < 0) {
            vimg_opts_free(o);
            return ret;
        }
    }
    if (filename && parent && parent->filename && !vimg_opts_has(o, "file")) {
        char *full = vimg_path_combine(parent->filename, filename);
        if (!full) {
            vimg_opts_free(o);
            return vimg_error_set(err, ENOMEM, "Out of memory");
        }
        ret = node_open(out, o, full, flags, err);
        free(full);
    } else {
        ret = node_open(out, o, filename, flags, err);
    }
    vimg_opts_free(o);
    /* The child opened a copy and rejected what it did not know under its own name. */
    if (opts)
        vimg_opts_mark_used(opts);
    return ret;
}

const char *
vimg_node_filename(const struct vimg_node *node)
{
    return node->filename;
}

const char *
vimg_node_format(const struct vimg_node *node)
{
    return node->drv->name;
}

struct vimg_node *
vimg_node_file(struct vimg_node *node)
{
    return node->file;
}

struct vimg_node *
vimg_node_backing(struct vimg_node *node)
{
    return node->backing;
}

const char *
vimg_node_backing_filename(const struct vimg_node *node)
{
    return node->backing_filename;
}

const char *
vimg_node_backing_format(const struct vimg_node *node)
{
    return node->backing_format;
}

bool
vimg_node_is_read_only(const struct vimg_node *node)
{
    return node->is_read_only;
}

bool
vimg_node_is_probed_raw(const struct vimg_node *node)
{
    return node->is_probed_raw;
}

uint32_t
vimg_node_cluster_size(const struct vimg_node *node)
{
    return node->cluster_size;
}

bool
vimg_node_can_compress(const struct vimg_node *node)
{
    return node->drv->pwrite_compressed != NULL;
}

bool
vimg_node_is_encrypted(const struct vimg_node *node)
{
    return node->is_encrypted;
}

bool
vimg_node_needs_compressed_writes(const struct vimg_node *node)
{
    return node->needs_compressed_writes;
}

bool
vimg_node_has_zero_init(struct vimg_node *node)
{
    if (node->backing)
        return false;
    if (node->drv->kind == VIMG_DRIVER_FORMAT && node->drv->is_filter)
        return node->file && vimg_node_has_zero_init(node->file);
    return node->drv->has_zero_init;
}
