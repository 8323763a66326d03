/*
 * Commands about the open image as a whole: open, close, reopen, info,
 * length, map, alloc, truncate; and the opening itself, shared with main.
 * -s (snapshot) opens the image, as qemu-io does, under a temporary qcow2
 * overlay: the image itself is only read.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <vimg/image.h>

#include "io.h"

#define OPEN_CACHE_MASK (VIMG_OPEN_NOCACHE | VIMG_OPEN_NO_FLUSH | VIMG_OPEN_WRITETHROUGH)

/* The -t/-c cache modes, as VIMG_OPEN_* flags; prints qemu-io's error. */
bool
io_parse_cache(const char *mode, unsigned *flags)
{
    unsigned f = *flags & ~OPEN_CACHE_MASK;

    if (strcmp(mode, "none") == 0 || strcmp(mode, "off") == 0)
        f |= VIMG_OPEN_NOCACHE;
    else if (strcmp(mode, "directsync") == 0)
        f |= VIMG_OPEN_NOCACHE | VIMG_OPEN_WRITETHROUGH;
    else if (strcmp(mode, "writethrough") == 0)
        f |= VIMG_OPEN_WRITETHROUGH;
    else if (strcmp(mode, "unsafe") == 0)
        f |= VIMG_OPEN_NO_FLUSH;
    else if (strcmp(mode, "writeback") != 0) {
        tool_error("Invalid cache option: %s", mode);
        return false;
    }
    *flags = f;
    return true;
}

/* Discard modes only decide whether discards reach the file; raw files accept both. */
bool
io_parse_discard(const char *mode)
{
    if (strcmp(mode, "off") == 0 || strcmp(mode, "ignore") == 0 ||
        strcmp(mode, "on") == 0 || strcmp(mode, "unmap") == 0)
        return true;
    tool_error("Invalid discard option: %s", mode);
    return false;
}

/* The aio mode becomes the default "aio" option of the image's file protocol. */
bool
io_parse_aio(const char *mode, unsigned *flags)
{
    *flags &= ~(VIMG_OPEN_AIO_NATIVE | VIMG_OPEN_AIO_IO_URING);
    if (strcmp(mode, "threads") == 0)
        return true;
    if (strcmp(mode, "io_uring") == 0) {
        *flags |= VIMG_OPEN_AIO_IO_URING;
        return true;
    }
    if (strcmp(mode, "native") == 0) {
        *flags |= VIMG_OPEN_AIO_NATIVE;
        return true;
    }
    tool_error("Invalid aio option: %s", mode);
    return false;
}

static void
open_error(const char *filename, const char *msg)
{
    if (filename)
        tool_error("can't open device %s: %s", filename, msg);
    else
        tool_error("can't open: %s", msg);
}

/* Copy-on-read needs a writable image: closes the one just opened when it is not. */
static bool
open_refuses_cor(struct io_state *s, const char *filename, unsigned flags)
{
    if (!s->is_cor || (flags & VIMG_OPEN_RDWR))
        return false;
    open_error(filename, "Can't use copy-on-read on read-only device");
    vimg_close(s->node);
    s->node = NULL;
    s->is_cor = false;
    return true;
}

int
io_open_image(struct io_state *s, const char *filename, const char *format,
              struct vimg_opts *opts, unsigned flags)
{
    struct vimg_error err = { 0 };

    if (vimg_open(&s->node, filename, format, opts, flags, &err) < 0) {
        open_error(filename, err.msg);
        vimg_opts_free(opts);
        s->node = NULL;
        s->is_cor = false;
        return -1;
    }
    if (open_refuses_cor(s, filename, flags)) {
        vimg_opts_free(opts);
        return -1;
    }
    s->filename = filename ? strdup(filename) : NULL;
    s->format = format ? strdup(format) : NULL;
    s->opts = opts;
    s->flags = flags;
    return 0;
}

/* What -s needs of the image: its format and its length, the overlay's size. */
struct snapshot_base {
    char *format;
    int64_t length;
    bool is_protocol;           /* the image is a protocol node: no format over it */
};

/* Opens the image read-only, as the overlay's backing file will be. */
static int
snapshot_probe_base(const char *filename, const char *format, const struct vimg_opts *opts,
                    unsigned flags, struct snapshot_base *b, struct vimg_error *err)
{
    struct vimg_node *node;
    int ret = vimg_open(&node, filename, format, opts, flags & ~VIMG_OPEN_RDWR, err);

    if (ret < 0)
        return ret;
    b->length = vimg_node_length(node, err);
    b->format = strdup(vimg_node_format(node));
    b->is_protocol = !vimg_node_file(node);
    vimg_close(node);
    if (b->length < 0)
        return (int)b->length;
    if (!b->format)
        return vimg_error_set(err, ENOMEM, "Out of memory");
    return 0;
}

/* Creates the empty overlay as QEMU names it: vl.XXXXXX in $TMPDIR, else /var/tmp. */
static int
snapshot_create_overlay(int64_t length, char **name, int *fd, struct vimg_error *err)
{
    const char *dir = getenv("TMPDIR");
    struct vimg_opts *opts;
    char size[32];
    int ret;

    if (asprintf(name, "%s/vl.XXXXXX", dir ? dir : "/var/tmp") < 0) {
        *name = NULL;
        return vimg_error_set(err, ENOMEM, "Out of memory");
    }
    if ((*fd = mkstemp(*name)) < 0) {
        int e = errno;
        return vimg_error_set(err, e, "Could not open temporary file '%s': %s", *name,
                              strerror(e));
    }
    snprintf(size, sizeof(size), "%" PRId64, length);
    if (!(opts = vimg_opts_new()))
        return vimg_error_set(err, ENOMEM, "Out of memory");
    ret = vimg_opts_set(opts, "size", size, err);
    if (ret == 0)
        ret = vimg_create(*name, "qcow2", opts, err);
    vimg_opts_free(opts);
    return ret;
}

/* Copies every entry of src into dst, each path prefixed ("backing."). */
static int
snapshot_copy_opts(struct vimg_opts *dst, const char *prefix, const struct vimg_opts *src,
                   struct vimg_error *err)
{
    for (size_t i = 0; i < vimg_opts_count(src); i++) {
        const char *key = vimg_opts_key_at(src, i);
        struct vimg_opts *dict = vimg_opts_dict_at(src, i);
        char *path;
        int ret;

        if (asprintf(&path, "%s%s%s", prefix, key, dict ? "." : "") < 0)
            return vimg_error_set(err, ENOMEM, "Out of memory");
        if (dict)
            ret = snapshot_copy_opts(dst, path, dict, err);
        else if (vimg_opts_is_number(src, key))
            ret = vimg_opts_set_number(dst, path, vimg_opts_value_at(src, i), err);
        else
            ret = vimg_opts_set(dst, path, vimg_opts_value_at(src, i), err);
        free(path);
        if (ret < 0)
            return ret;
    }
    return 0;
}

/*
 * The image as the overlay's "backing" child: what the user gave, with its
 * format; a filename names the format's file, or a protocol node's own.
 */
static int
snapshot_backing_opts(struct vimg_opts *o, const char *filename, const struct snapshot_base *b,
                      const struct vimg_opts *opts, unsigned flags, struct vimg_error *err)
{
    struct vimg_opts *json;
    int ret = opts ? snapshot_copy_opts(o, "backing.", opts, err) : 0;

    if (ret == 0 && filename && strncmp(filename, "json:", 5) == 0) {
        if (!(json = vimg_opts_new()))
            return vimg_error_set(err, ENOMEM, "Out of memory");
        ret = vimg_opts_parse_json(json, filename + 5, err);
        if (ret == 0)
            ret = snapshot_copy_opts(o, "backing.", json, err);
        vimg_opts_free(json);
    } else if (ret == 0 && filename) {
        /* A "file" string is parsed as the user's filename string (a protocol's URL), which
         * a "filename" option is not: a protocol node goes under raw unless -o named it. */
        bool under_raw = b->is_protocol && !(opts && vimg_opts_peek(opts, "driver"));
        ret = vimg_opts_set(o, b->is_protocol && !under_raw ? "backing.filename" : "backing.file",
                            filename, err);
        if (ret == 0 && under_raw)
            ret = vimg_opts_set(o, "backing.driver", "raw", err);
    }
    if (ret == 0)
        ret = vimg_opts_set_default(o, "backing.driver", b->format, err);
    if (ret == 0 && (flags & VIMG_OPEN_FORCE_SHARE))
        ret = vimg_opts_set(o, "backing.force-share", "on", err);
    if (ret == 0 && (flags & VIMG_OPEN_NOCACHE))
        ret = vimg_opts_set_default(o, "backing.cache.direct", "on", err);
    return ret;
}

/*
 * The overlay is reached through /proc/self/fd, so that reopen still finds
 * it once it is unlinked.
 */
static struct vimg_opts *
snapshot_overlay_opts(int fd, const char *filename, const struct snapshot_base *b,
                      const struct vimg_opts *opts, unsigned flags, struct vimg_error *err)
{
    struct vimg_opts *o = vimg_opts_new();
    char path[64];

    if (!o) {
        vimg_error_set(err, ENOMEM, "Out of memory");
        return NULL;
    }
    snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
    if (vimg_opts_set(o, "driver", "qcow2", err) < 0 ||
        vimg_opts_set(o, "file.driver", "file", err) < 0 ||
        vimg_opts_set(o, "file.filename", path, err) < 0 ||
        snapshot_backing_opts(o, filename, b, opts, flags, err) < 0) {
        vimg_opts_free(o);
        return NULL;
    }
    return o;
}

/* Takes opts. The overlay is unlinked whether or not it could be opened. */
int
io_open_snapshot(struct io_state *s, const char *filename, const char *format,
                 struct vimg_opts *opts, unsigned flags)
{
    struct vimg_error err = { 0 };
    struct snapshot_base b = { 0 };
    struct vimg_opts *o = NULL;
    /* As QEMU's, the overlay never bypasses the host cache (nor uses native aio). */
    unsigned oflags = (flags & VIMG_OPEN_RDWR ? flags & ~VIMG_OPEN_FORCE_SHARE : flags) &
                      ~(VIMG_OPEN_NOCACHE | VIMG_OPEN_AIO_NATIVE | VIMG_OPEN_AIO_IO_URING);
    char *name = NULL;
    int fd = -1;
    int ret = snapshot_probe_base(filename, format, opts, flags, &b, &err);

    if (ret == 0)
        ret = snapshot_create_overlay(b.length, &name, &fd, &err);
    if (ret == 0 && !(o = snapshot_overlay_opts(fd, filename, &b, opts, flags, &err)))
        ret = -1;
    if (ret == 0)
        ret = vimg_open(&s->node, NULL, NULL, o, oflags, &err);
    if (fd >= 0)
        unlink(name);
    free(b.format);
    vimg_opts_free(opts);
    if (ret < 0 || open_refuses_cor(s, filename, oflags)) {
        if (ret < 0)
            open_error(filename, err.msg);
        if (fd >= 0)
            close(fd);
        free(name);
        vimg_opts_free(o);
        s->node = NULL;
        s->is_cor = false;
        return -1;
    }
    s->is_snapshot = true;
    s->snapshot_fd = fd;
    s->snapshot_name = name;
    s->opts = o;
    s->flags = oflags;
    return 0;
}

void
io_close_image(struct io_state *s)
{
    io_drain(s);
    vimg_close(s->node);
    s->node = NULL;
    s->is_cor = false;
    if (s->is_snapshot) {
        close(s->snapshot_fd);
        free(s->snapshot_name);
        s->snapshot_name = NULL;
        s->is_snapshot = false;
        s->is_snapshot_reopened = false;
    }
    free(s->filename);
    free(s->format);
    vimg_opts_free(s->opts);
    s->filename = NULL;
    s->format = NULL;
    s->opts = NULL;
}

struct open_args {
    unsigned flags;
    bool is_snapshot;
    bool is_cor;
    struct vimg_opts *opts;
};

static int
open_getopt(int argc, char **argv, struct open_args *a)
{
    struct vimg_error err = { 0 };
    int c;

    while ((c = getopt(argc, argv, "snCro:ki:t:d:U")) != -1) {
        switch (c) {
        case 's': a->is_snapshot = true; break;
        case 'n': a->flags = (a->flags & ~OPEN_CACHE_MASK) | VIMG_OPEN_NOCACHE; break;
        case 'C': a->is_cor = true; break;
        case 'r': a->flags &= ~VIMG_OPEN_RDWR; break;
        case 'o':
            if (vimg_opts_parse(a->opts, optarg, NULL, &err) < 0) {
                tool_error("%s", err.msg);
                return -1;
            }
            break;
        case 'k': a->flags |= VIMG_OPEN_AIO_NATIVE; break;
        case 'i': if (!io_parse_aio(optarg, &a->flags)) return -1; break;
        case 't': if (!io_parse_cache(optarg, &a->flags)) return -1; break;
        case 'd': if (!io_parse_discard(optarg)) return -1; break;
        case 'U': a->flags |= VIMG_OPEN_FORCE_SHARE; break;
        default:
            return io_usage(io_find_cmd("open"));
        }
    }
    return 0;
}

/* "key" without "=value" in an options string means key=on, which QEMU warns about. */
void
io_warn_short_booleans(const char *str)
{
    const char *p = str, *key;

    for (;;) {
        key = p;
        while (*p && *p != '=' && *p != ',')
            p++;
        if (*p == '=') {
            while (*++p && !(*p == ',' && p[1] != ','))
                p += *p == ',';
        } else {
            /* "nofoo" is QEMU's short form of foo=off. */
            bool is_no = p - key > 2 && strncmp(key, "no", 2) == 0;
            const char *name = is_no ? key + 2 : key;
            tool_error("warning: short-form boolean option '%.*s' deprecated\n"
                       "Please use %.*s=%s instead", (int)(p - key), key, (int)(p - name),
                       name, is_no ? "off" : "on");
        }
        if (!*p)
            return;
        p++;
    }
}

/* With --image-opts the path argument is itself an options string. */
static int
open_image_opts(struct open_args *a, const char *arg)
{
    struct vimg_error err = { 0 };

    io_warn_short_booleans(arg);
    if (vimg_opts_parse(a->opts, arg, NULL, &err) < 0) {
        tool_error("%s", err.msg);
        return -1;
    }
    return 0;
}

/* Takes a->opts: io_open_image keeps or frees it, and so do the early failures. */
static int
open_checked(struct io_state *s, struct open_args *a, const char *filename)
{
    const char *msg = NULL;

    if (s->node)
        msg = "file open already, try 'help close'";
    else if (!filename && vimg_opts_is_empty(a->opts))
        msg = "can't open: Must specify either driver or file";
    if (msg) {
        tool_error("%s", msg);
        vimg_opts_free(a->opts);
        return -1;
    }
    if (vimg_opts_is_empty(a->opts)) {
        vimg_opts_free(a->opts);
        a->opts = NULL;
    }
    s->is_cor = a->is_cor;
    if (a->is_snapshot)
        return io_open_snapshot(s, filename, NULL, a->opts, a->flags);
    return io_open_image(s, filename, NULL, a->opts, a->flags);
}

int
io_cmd_open(struct io_state *s, int argc, char **argv)
{
    struct open_args a = { .flags = VIMG_OPEN_RDWR, .opts = vimg_opts_new() };
    const char *filename = NULL;

    if (!a.opts || open_getopt(argc, argv, &a) < 0)
        goto fail;
    if (s->is_image_opts && !vimg_opts_is_empty(a.opts)) {
        printf("--image-opts and 'open -o' are mutually exclusive\n");
        goto fail;
    }
    if (optind == argc - 1) {
        filename = argv[optind];
        if (s->is_image_opts) {
            if (open_image_opts(&a, filename) < 0)
                goto fail;
            filename = NULL;
        }
    } else if (optind != argc) {
        io_usage(io_find_cmd("open"));
        goto fail;
    }
    return open_checked(s, &a, filename);
fail:
    vimg_opts_free(a.opts);
    return -1;
}

int
io_cmd_close(struct io_state *s, int argc, char **argv)
{
    (void)argc;
    (void)argv;
    io_close_image(s);
    return 0;
}

/*
 * Where qcow2 keeps the VM state: the first guest offset that the L1 table
 * of the disk's size no longer covers, in whole L2 tables (8-byte entries,
 * 16 with extended L2). Other formats have none.
 */
static uint64_t
info_vm_state_offset(struct io_state *s, const json_t *spec)
{
    struct vimg_error err = { 0 };
    uint64_t cluster = vimg_node_cluster_size(s->node), cover;
    bool is_ext = json_is_true(json_object_get(json_object_get(spec, "data"), "extended-l2"));
    int64_t len = vimg_node_length(s->node, &err);

    if (strcmp(vimg_node_format(s->node), "qcow2") != 0 || len < 0 || cluster == 0)
        return 0;
    cover = cluster * (cluster / (is_ext ? 16 : 8));
    return ((uint64_t)len + cover - 1) / cover * cover;
}

/* qemu-io's `info`: the format, bdrv_get_info's numbers, the format-specific tree. */
int
io_cmd_info(struct io_state *s, int argc, char **argv)
{
    struct vimg_error err = { 0 };
    json_t *info = NULL, *spec;
    char buf[64];

    (void)argc;
    (void)argv;
    printf("format name: %s\n", vimg_node_format(s->node));
    if (vimg_image_info(s->node, &info, &err) < 0) {
        tool_error("%s", err.msg);
        return -1;
    }
    spec = json_object_get(info, "format-specific");
    io_cvtstr(vimg_node_cluster_size(s->node), buf, sizeof(buf));
    printf("cluster size: %s\n", buf);
    io_cvtstr((double)info_vm_state_offset(s, spec), buf, sizeof(buf));
    printf("vm state offset: %s\n", buf);
    if (spec) {
        printf("Format specific information:\n");
        tool_dump_tree(json_object_get(spec, "data"), 4);
    }
    json_decref(info);
    return 0;
}

int
io_cmd_length(struct io_state *s, int argc, char **argv)
{
    struct vimg_error err = { 0 };
    int64_t len = vimg_node_length(s->node, &err);
    char buf[64];

    (void)argc;
    (void)argv;
    if (len < 0) {
        printf("getlength: %s\n", strerror(err.errnum));
        return -1;
    }
    io_cvtstr((double)len, buf, sizeof(buf));
    printf("%s\n", buf);
    return 0;
}

/* Whether [offset, +bytes) starts allocated, and for how long (*n). */
static int
is_allocated(struct io_state *s, int64_t offset, int64_t bytes, int64_t *n, bool *is_alloc)
{
    struct vimg_error err = { 0 };
    struct vimg_block_status bs;

    /* This layer alone, as bdrv_is_allocated: a backing file's data does not count. */
    if (vimg_node_block_status_above(s->node, vimg_node_backing(s->node), (uint64_t)offset,
                                     (uint64_t)bytes, &bs, &err) < 0) {
        printf("is_allocated failed: %s\n", strerror(err.errnum));
        return -1;
    }
    *is_alloc = bs.flags & VIMG_BS_ALLOCATED;
    *n = (int64_t)bs.bytes < bytes ? (int64_t)bs.bytes : bytes;
    return 0;
}

/* The run of same allocation state starting at offset, merged over block-status calls. */
static int
map_run(struct io_state *s, int64_t offset, int64_t bytes, int64_t *n, bool *is_alloc)
{
    int64_t len;
    bool next;

    if (is_allocated(s, offset, bytes, n, is_alloc) < 0)
        return -1;
    while (*n < bytes && *n > 0) {
        if (is_allocated(s, offset + *n, bytes - *n, &len, &next) < 0)
            return -1;
        if (next != *is_alloc || len == 0)
            break;
        *n += len;
    }
    return 0;
}

int
io_cmd_map(struct io_state *s, int argc, char **argv)
{
    struct vimg_error err = { 0 };
    int64_t len = vimg_node_length(s->node, &err), offset = 0, n;
    char s1[64], s2[64];
    bool is_alloc;

    (void)argc;
    (void)argv;
    if (len < 0) {
        printf("getlength: %s\n", strerror(err.errnum));
        return -1;
    }
    while (offset < len) {
        if (map_run(s, offset, len - offset, &n, &is_alloc) < 0)
            return -1;
        if (n == 0)
            break;
        io_cvtstr((double)n, s1, sizeof(s1));
        io_cvtstr((double)offset, s2, sizeof(s2));
        printf("%s (0x%" PRIx64 ") bytes %s allocated at offset %s (0x%" PRIx64 ")\n", s1,
               (uint64_t)n, is_alloc ? "   " : "not", s2, (uint64_t)offset);
        offset += n;
    }
    return 0;
}

int
io_cmd_alloc(struct io_state *s, int argc, char **argv)
{
    struct vimg_error err = { 0 };
    int64_t offset, count = 512, len, n, done = 0, sum = 0;
    char buf[64];
    bool is_alloc;

    if ((offset = io_cvtnum(argv[1])) < 0 || (argc == 3 && (count = io_cvtnum(argv[2])) < 0))
        return -1;
    if ((len = vimg_node_length(s->node, &err)) < 0) {
        printf("getlength: %s\n", strerror(err.errnum));
        return -1;
    }
    count = offset >= len ? 0 : (count < len - offset ? count : len - offset);
    while (done < count) {
        if (is_allocated(s, offset + done, count - done, &n, &is_alloc) < 0)
            return -1;
        if (n == 0)
            break;
        if (is_alloc)
            sum += n;
        done += n;
    }
    io_cvtstr((double)offset, buf, sizeof(buf));
    printf("%" PRId64 "/%" PRId64 " bytes allocated at offset %s\n", sum, done, buf);
    return 0;
}

static bool
prealloc_is_valid(const char *mode)
{
    static const char *const modes[] = { "off", "metadata", "falloc", "full" };

    for (size_t i = 0; i < sizeof(modes) / sizeof(modes[0]); i++) {
        if (strcmp(mode, modes[i]) == 0)
            return true;
    }
    tool_error("Invalid preallocation mode '%s'", mode);
    return false;
}

int
io_cmd_truncate(struct io_state *s, int argc, char **argv)
{
    struct vimg_error err = { 0 };
    const char *prealloc = "off";
    int64_t offset;
    int c;

    /* Taking the resize permission opens the -s overlay again by name, as in reopen. */
    if (s->is_snapshot && s->is_snapshot_reopened) {
        tool_error("Could not open '%s': %s", s->snapshot_name, strerror(ENOENT));
        return -1;
    }
    while ((c = getopt(argc, argv, "m:")) != -1) {
        if (c != 'm')
            return io_usage(io_find_cmd("truncate"));
        prealloc = optarg;
        if (!prealloc_is_valid(prealloc))
            return -1;
    }
    /* Words after the size are ignored, as qemu-io ignores them. */
    if (optind >= argc)
        return io_usage(io_find_cmd("truncate"));
    /* qemu-io names its first argument, not the size, in the parse error. */
    if ((c = io_parse_num(argv[optind], &offset)) < 0) {
        io_print_cvtnum_err(c, argv[1]);
        return -1;
    }
    if (vimg_node_truncate(s->node, (uint64_t)offset, true, prealloc, &err) < 0) {
        tool_error("%s", err.msg);
        return -1;
    }
    return 0;
}
