/*
 * qcow2 image creation with qemu-img's options, defaults, checks and error
 * texts (observed from qemu-img 7.2). The layout is QEMU's: header cluster,
 * refcount table, one refcount block, then the image is opened and grown
 * to its size, which places the L1 table in the next free cluster. Images
 * come out byte-identical to qemu-img's for preallocation off and metadata.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <vimg/object.h>

#include "formats/qcow2/qcow2.h"

/* In the order qemu-img prints them after "Formatting ..."; `-o help` sorts them. */
const struct vimg_opt_desc qcow2_create_opts[] = {
    { "encryption", VIMG_OPT_BOOL,
      "Encrypt the image with format 'aes'. (Deprecated in favor of encrypt.format=aes)", NULL },
    { "encrypt.format", VIMG_OPT_STRING, "Encrypt the image, format choices: 'aes', 'luks'",
      NULL },
    { "encrypt.key-secret", VIMG_OPT_STRING,
      "ID of secret providing qcow AES key or LUKS passphrase", NULL },
    { "encrypt.cipher-alg", VIMG_OPT_STRING, "Name of encryption cipher algorithm", NULL },
    { "encrypt.cipher-mode", VIMG_OPT_STRING, "Name of encryption cipher mode", NULL },
    { "encrypt.ivgen-alg", VIMG_OPT_STRING, "Name of IV generator algorithm", NULL },
    { "encrypt.ivgen-hash-alg", VIMG_OPT_STRING, "Name of IV generator hash algorithm", NULL },
    { "encrypt.hash-alg", VIMG_OPT_STRING, "Name of encryption hash algorithm", NULL },
    { "encrypt.iter-time", VIMG_OPT_NUMBER, "Time to spend in PBKDF in milliseconds", NULL },
    { "cluster_size", VIMG_OPT_SIZE, "qcow2 cluster size", "65536" },
    { "extended_l2", VIMG_OPT_BOOL, "Extended L2 tables", "off" },
    { "preallocation", VIMG_OPT_STRING,
      "Preallocation mode (allowed values: off, metadata, falloc, full)", NULL },
    { "compression_type", VIMG_OPT_STRING,
      "Compression method used for image cluster compression", "zlib" },
    { "size", VIMG_OPT_SIZE, "Virtual disk size", NULL },
    { "compat", VIMG_OPT_STRING, "Compatibility level (v2 [0.10] or v3 [1.1])", NULL },
    { "backing_file", VIMG_OPT_STRING, "File name of a base image", NULL },
    { "backing_fmt", VIMG_OPT_STRING, "Image format of the base image", NULL },
    { "data_file", VIMG_OPT_STRING, "File name of an external data file", NULL },
    { "data_file_raw", VIMG_OPT_BOOL, "The external data file must stay valid as a raw image",
      NULL },
    { "lazy_refcounts", VIMG_OPT_BOOL, "Postpone refcount updates", "off" },
    { "refcount_bits", VIMG_OPT_NUMBER, "Width of a reference count entry in bits", "16" },
    { NULL, 0, NULL, NULL },
};

/* The creation options, parsed. */
struct qcow2_create_params {
    uint64_t size;
    bool has_size;
    uint32_t version;
    uint64_t cluster_size;
    uint32_t cluster_bits;
    bool has_extended_l2;
    int prealloc;
    uint8_t compression_type;
    uint64_t refcount_bits;
    bool has_lazy_refcounts;
    const char *backing_file;
    const char *backing_fmt;
    const char *data_file;
    bool is_data_file_raw;
};

static const char *const qcow2_v3_texts = "(use version=v3 or greater)";

static int
qcow2_parse_version(struct vimg_opts *opts, struct qcow2_create_params *p,
                    struct vimg_error *err)
{
    const char *compat = vimg_opts_get(opts, "compat");

    p->version = 3;
    if (!compat)
        return 0;
    if (strcmp(compat, "0.10") == 0 || strcmp(compat, "v2") == 0)
        p->version = 2;
    else if (strcmp(compat, "1.1") != 0 && strcmp(compat, "v3") != 0)
        return vimg_error_set(err, EINVAL, "Parameter 'version' does not accept value '%s'",
                              compat);
    return 0;
}

static int
qcow2_parse_strings(struct vimg_opts *opts, struct qcow2_create_params *p,
                    struct vimg_error *err)
{
    const char *prealloc = vimg_opts_get(opts, "preallocation");
    const char *ctype = vimg_opts_get(opts, "compression_type");

    if (prealloc && vimg_prealloc_parse(prealloc, &p->prealloc, NULL) < 0)
        return vimg_error_set(err, EINVAL, "Parameter 'preallocation' does not accept value "
                              "'%s'", prealloc);
    if (ctype && strcmp(ctype, "zlib") == 0)
        p->compression_type = QCOW2_COMPRESSION_ZLIB;
    else if (ctype && strcmp(ctype, "zstd") == 0)
        p->compression_type = QCOW2_COMPRESSION_ZSTD;
    else if (ctype)
        return vimg_error_set(err, EINVAL, "Parameter 'compression-type' does not accept "
                              "value '%s'", ctype);
    p->backing_file = vimg_opts_get(opts, "backing_file");
    p->backing_fmt = vimg_opts_get(opts, "backing_fmt");
    p->data_file = vimg_opts_get(opts, "data_file");
    return 0;
}

static int
qcow2_parse_params(struct vimg_opts *opts, struct qcow2_create_params *p,
                   struct vimg_error *err)
{
    int ret;

    memset(p, 0, sizeof(*p));
    p->has_size = vimg_opts_has(opts, "size");
    if ((ret = vimg_opts_get_size(opts, "size", 0, &p->size, err)) < 0 ||
        (ret = qcow2_parse_version(opts, p, err)) < 0 ||
        (ret = vimg_opts_get_size(opts, "cluster_size", 65536, &p->cluster_size, err)) < 0 ||
        (ret = vimg_opts_get_bool(opts, "extended_l2", false, &p->has_extended_l2, err)) < 0 ||
        (ret = vimg_opts_get_number(opts, "refcount_bits", 16, &p->refcount_bits, err)) < 0 ||
        (ret = vimg_opts_get_bool(opts, "lazy_refcounts", false, &p->has_lazy_refcounts,
                                  err)) < 0 ||
        (ret = vimg_opts_get_bool(opts, "data_file_raw", false, &p->is_data_file_raw,
                                  err)) < 0 ||
        (ret = qcow2_parse_strings(opts, p, err)) < 0)
        return ret;
    return 0;
}

static int
qcow2_check_v2_params(const struct qcow2_create_params *p, struct vimg_error *err)
{
    if (p->version >= 3)
        return 0;
    if (p->has_lazy_refcounts)
        return vimg_error_set(err, EINVAL, "Lazy refcounts only supported with compatibility "
                              "level 1.1 and above %s", qcow2_v3_texts);
    if (p->has_extended_l2)
        return vimg_error_set(err, EINVAL, "Extended L2 entries are only supported with "
                              "compatibility level 1.1 and above %s", qcow2_v3_texts);
    if (p->refcount_bits != 16)
        return vimg_error_set(err, EINVAL, "Different refcount widths than 16 bits require "
                              "compatibility level 1.1 or above %s", qcow2_v3_texts);
    if (p->data_file)
        return vimg_error_set(err, EINVAL, "External data files are only supported with "
                              "compatibility level 1.1 and above %s", qcow2_v3_texts);
    if (p->compression_type != QCOW2_COMPRESSION_ZLIB)
        return vimg_error_set(err, EINVAL, "Non-zlib compression type is only supported with "
                              "compatibility level 1.1 and above %s", qcow2_v3_texts);
    return 0;
}

static int
qcow2_check_params(struct qcow2_create_params *p, struct vimg_error *err)
{
    int ret;

    if (p->cluster_size < 512 || p->cluster_size > (2u << 20) ||
        (p->cluster_size & (p->cluster_size - 1)))
        return vimg_error_set(err, EINVAL, "Cluster size must be a power of two between 512 "
                              "and 2048k");
    p->cluster_bits = (uint32_t)__builtin_ctzll(p->cluster_size);
    if (p->refcount_bits == 0 || p->refcount_bits > 64 ||
        (p->refcount_bits & (p->refcount_bits - 1)))
        return vimg_error_set(err, EINVAL, "Refcount width must be a power of two and may not "
                              "exceed 64 bits");
    if (p->backing_fmt && !p->backing_file)
        return vimg_error_set(err, EINVAL, "Backing format cannot be used without backing "
                              "file");
    if (p->is_data_file_raw && !p->data_file)
        return vimg_error_set(err, EINVAL, "data-file-raw requires data-file");
    if (p->is_data_file_raw && p->backing_file)
        return vimg_error_set(err, EINVAL, "Backing file and data-file-raw cannot be used at "
                              "the same time");
    if ((ret = qcow2_check_v2_params(p, err)) < 0)
        return ret;
    if (p->has_extended_l2 && p->cluster_size < 16384)
        return vimg_error_set(err, EINVAL, "Extended L2 entries are only supported with "
                              "cluster sizes of at least 16384 bytes");
    if (p->backing_file && p->prealloc != VIMG_PREALLOC_OFF && !p->has_extended_l2)
        return vimg_error_set(err, EINVAL, "Backing file and preallocation can only be used "
                              "at the same time if extended_l2 is on");
    if (p->is_data_file_raw && p->prealloc == VIMG_PREALLOC_OFF)
        p->prealloc = VIMG_PREALLOC_METADATA;
    return 0;
}

/* The feature name table QEMU writes into every version 3 image. */
static uint32_t
qcow2_put_feature_table(uint8_t *buf, uint32_t at)
{
    uint8_t table[QCOW2_FEATURE_TABLE_SIZE];

    qcow2_fill_feature_table(table);
    return qcow2_put_ext(buf, at, QCOW2_EXT_FEATURE_TABLE, table, sizeof(table));
}

/* qemu-img leaves the feature name table out of images with clusters of 4k and less. */
static bool
qcow2_has_feature_table(const struct qcow2_create_params *p)
{
    return p->version >= 3 && p->cluster_size > 4096;
}

static uint64_t
qcow2_header_bytes(const struct qcow2_create_params *p, size_t fmt_len, size_t df_len,
                   size_t name_len)
{
    uint64_t n = p->version >= 3 ? QCOW2_V3_HEADER_LENGTH : QCOW2_V2_HEADER_LENGTH;

    if (p->backing_fmt)
        n += 8 + qcow2_align_up(fmt_len, 8);
    if (p->data_file)
        n += 8 + qcow2_align_up(df_len, 8);
    if (qcow2_has_feature_table(p))
        n += 8 + 8 * QCOW2_FEATURE_ENTRY_SIZE;
    return n + 8 + name_len;
}

/* Header, extensions and backing file name in the first cluster (buf, zeroed). */
static int
qcow2_build_header(const struct qcow2_create_params *p, uint8_t *buf, struct vimg_error *err)
{
    struct qcow2_header h;
    size_t fmt_len = p->backing_fmt ? strlen(p->backing_fmt) : 0;
    size_t df_len = p->data_file ? strlen(p->data_file) : 0;
    size_t name_len = p->backing_file ? strlen(p->backing_file) : 0;
    uint32_t at;

    memset(&h, 0, sizeof(h));
    h.version = p->version;
    h.cluster_bits = p->cluster_bits;
    h.refcount_table_offset = p->cluster_size;
    h.refcount_table_clusters = 1;
    h.refcount_order = (uint32_t)__builtin_ctzll(p->refcount_bits);
    h.header_length = p->version >= 3 ? QCOW2_V3_HEADER_LENGTH : QCOW2_V2_HEADER_LENGTH;
    h.compression_type = p->compression_type;
    h.incompatible_features = (p->data_file ? QCOW2_INCOMPAT_DATA_FILE : 0) |
        (p->compression_type ? QCOW2_INCOMPAT_COMPRESSION : 0) |
        (p->has_extended_l2 ? QCOW2_INCOMPAT_EXTL2 : 0);
    h.compatible_features = p->has_lazy_refcounts ? QCOW2_COMPAT_LAZY_REFCOUNTS : 0;
    h.autoclear_features = p->is_data_file_raw ? QCOW2_AUTOCLEAR_DATA_FILE_RAW : 0;
    /* Everything must fit in the first cluster: the extensions, the end marker and the name. */
    if (fmt_len > QCOW2_MAX_BACKING_NAME || name_len > QCOW2_MAX_BACKING_NAME ||
        qcow2_header_bytes(p, fmt_len, df_len, name_len) > p->cluster_size)
        return vimg_error_set(err, EINVAL, "Header extension too large");
    at = h.header_length;
    if (p->backing_fmt)
        at = qcow2_put_ext(buf, at, QCOW2_EXT_BACKING_FORMAT, p->backing_fmt,
                           (uint32_t)fmt_len);
    if (p->data_file)
        at = qcow2_put_ext(buf, at, QCOW2_EXT_DATA_FILE, p->data_file, (uint32_t)df_len);
    if (qcow2_has_feature_table(p))
        at = qcow2_put_feature_table(buf, at);
    at += 8;    /* end of extensions: type 0, length 0 */
    if (p->backing_file) {
        h.backing_file_offset = at;
        h.backing_file_size = (uint32_t)name_len;
        memcpy(buf + at, p->backing_file, name_len);
    }
    qcow2_encode_header(&h, buf);
    return 0;
}

static int
qcow2_write_initial(const char *filename, const struct qcow2_create_params *p,
                    struct vimg_error *err)
{
    struct vimg_node *file;
    struct qcow2_state s;
    uint8_t *buf = calloc(3, p->cluster_size);
    int ret;

    if (!buf)
        return vimg_error_set(err, ENOMEM, "Out of memory");
    if ((ret = qcow2_build_header(p, buf, err)) < 0)
        goto out;
    memset(&s, 0, sizeof(s));
    s.refcount_bits = (uint32_t)p->refcount_bits;
    qcow2_put_be64(buf + p->cluster_size, 2 * p->cluster_size);
    for (uint64_t i = 0; i < 3; i++)
        qcow2_refcount_set_raw(&s, buf + 2 * p->cluster_size, i, 1);
    ret = vimg_open(&file, filename, NULL, NULL, VIMG_OPEN_RDWR | VIMG_OPEN_PROTOCOL, err);
    if (ret < 0)
        goto out;
    ret = qcow2_pwrite_file(file, 0, buf, 3 * p->cluster_size, err);
    if (ret == 0)
        ret = vimg_node_flush(file, err);
    vimg_close(file);
out:
    free(buf);
    return ret;
}

/* Opens the new image, grows it to its size and then encrypts it, as QEMU does. */
static int
qcow2_grow_new(const char *filename, const struct qcow2_create_params *p,
               const struct qcow2_crypt_params *crypt, struct vimg_error *err)
{
    struct vimg_opts *o = vimg_opts_new();
    struct vimg_node *node;
    int ret = 0;

    if (!o)
        return vimg_error_set(err, ENOMEM, "Out of memory");
    /* The data file is named as given here, not relative to the image. */
    if (p->data_file)
        ret = vimg_opts_set(o, "data-file", p->data_file, err);
    if (ret == 0)
        ret = vimg_open(&node, filename, "qcow2", o,
                        VIMG_OPEN_RDWR | VIMG_OPEN_NO_BACKING | VIMG_OPEN_RESIZE, err);
    vimg_opts_free(o);
    if (ret < 0)
        return ret;
    /* As QEMU, the size is rounded up to whole sectors. */
    ret = vimg_node_truncate(node, qcow2_align_up(p->size, 512), true,
                             vimg_prealloc_name(p->prealloc), err);
    if (ret == 0 && crypt)
        ret = qcow2_crypt_format_new(node, crypt, err);
    if (ret == 0)
        ret = vimg_node_flush(node, err);
    vimg_close(node);
    return ret;
}

/* Like qemu-img, a failed encrypted creation leaves no file behind (plain files only). */
static void
qcow2_remove_storage(const char *filename)
{
    if (!filename || strcmp(vimg_protocol_guess(filename)->name, "file") != 0)
        return;
    if (strncmp(filename, "file:", 5) == 0)
        filename += 5;
    (void)unlink(filename);
}

static int
qcow2_create_files(const char *filename, const struct qcow2_create_params *p,
                   struct vimg_opts *opts, const struct qcow2_crypt_params *crypt,
                   struct vimg_error *err)
{
    int ret;

    if ((ret = vimg_create_file_empty(filename, opts, err)) < 0)
        return ret;
    if (p->data_file && (ret = vimg_create_file_empty(p->data_file, opts, err)) < 0)
        return ret;
    if ((ret = qcow2_write_initial(filename, p, err)) < 0)
        return ret;
    ret = qcow2_grow_new(filename, p, crypt, err);
    if (ret < 0 && crypt) {
        qcow2_remove_storage(filename);
        qcow2_remove_storage(p->data_file);
    }
    return ret;
}

int
qcow2_create(const char *filename, struct vimg_opts *opts, struct vimg_error *err)
{
    struct qcow2_create_params p;
    struct qcow2_crypt_params *crypt = NULL;
    int ret;

    if ((ret = qcow2_parse_params(opts, &p, err)) < 0 ||
        (ret = qcow2_check_params(&p, err)) < 0 ||
        (ret = qcow2_crypt_parse_create(opts, &crypt, err)) < 0)
        return ret;
    /* The backing file was checked, and gave the size, in `create` unless -u said not to. */
    if (!p.has_size)
        ret = vimg_error_set(err, EINVAL, "Image creation needs a size parameter");
    else
        ret = qcow2_create_files(filename, &p, opts, crypt, err);
    qcow2_crypt_params_free(crypt);
    return ret;
}
