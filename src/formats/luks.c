/*
 * The luks format: a LUKS1 volume in a file (header, key slots, then the
 * payload encrypted sector by sector), as QEMU's "luks" block driver sees
 * it. The header code is in src/crypto/luks.c; this file opens and creates
 * volumes over the "file" child and moves data through the cipher.
 *
 * Opened without I/O (`info`), the header is read but no key is needed.
 * Creation follows qemu-img 7.2: the file is made first and removed again
 * when anything fails afterwards.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/crypto.h>

#include <vimg/object.h>

#include "core/driver.h"
#include "crypto/luks.h"
#include "crypto/sector-pool.h"

/* Requests are encrypted in pieces of this size, each in its own buffer. */
#define LUKS_CHUNK (1u << 20)

struct luks_state {
    struct vimg_luks *luks;
    uint64_t payload_offset;        /* bytes */
    struct vimg_sector_pool *pool;  /* workers for large requests */
};

static int
luks_probe(const uint8_t *buf, size_t len, const char *filename)
{
    (void)filename;
    return vimg_luks_probe(buf, len) ? 100 : 0;
}

static int
luks_read_header(void *opaque, uint64_t offset, void *buf, size_t len, struct vimg_error *err)
{
    return vimg_node_pread(opaque, offset, buf, len, 0, err);
}

static int
luks_write_header(void *opaque, uint64_t offset, const void *buf, size_t len,
                  struct vimg_error *err)
{
    return vimg_node_pwrite(opaque, offset, buf, len, 0, err);
}

/* While creating: the new file grows to take what is written. */
static int
luks_write_new(void *opaque, uint64_t offset, const void *buf, size_t len,
               struct vimg_error *err)
{
    int ret = vimg_node_truncate(opaque, offset + len, false, NULL, err);

    return ret < 0 ? ret : luks_write_header(opaque, offset, buf, len, err);
}

/* The passphrase the key-secret option names; QEMU's texts when there is none. */
static int
luks_get_passphrase(const char *key_secret, char **pass, size_t *len, struct vimg_error *err)
{
    if (!key_secret)
        return vimg_error_set(err, EINVAL, "Parameter 'key-secret' is required for cipher");
    return vimg_secret_lookup(key_secret, pass, len, err);
}

static void
luks_free_passphrase(char *pass, size_t len)
{
    if (pass)
        OPENSSL_cleanse(pass, len);
    free(pass);
}

static int
luks_open(struct vimg_node *node, struct vimg_opts *opts, unsigned flags,
          struct vimg_error *err)
{
    struct luks_state *s = node->state;
    const char *key_secret = vimg_opts_get(opts, "key-secret");
    char *pass = NULL;
    size_t pass_len = 0;
    int64_t file_len;
    int ret;

    if (!(flags & VIMG_OPEN_NO_IO) &&
        (ret = luks_get_passphrase(key_secret, &pass, &pass_len, err)) < 0)
        return ret;
    ret = vimg_luks_open(&s->luks, luks_read_header, node->file, pass, pass_len, err);
    luks_free_passphrase(pass, pass_len);
    if (ret < 0)
        return ret;
    s->payload_offset = vimg_luks_payload_offset(s->luks);
    file_len = vimg_node_length(node->file, err);
    if (file_len < 0 || (uint64_t)file_len < s->payload_offset) {
        vimg_luks_free(s->luks);
        return file_len < 0 ? (int)file_len
               : vimg_error_set(err, EIO, "Could not refresh total sector count: "
                                "Input/output error");
    }
    if (!(s->pool = vimg_sector_pool_new())) {
        vimg_luks_free(s->luks);
        return vimg_error_set(err, ENOMEM, "Out of memory");
    }
    node->request_alignment = VIMG_CRYPT_SECTOR_SIZE;
    node->is_encrypted = true;
    return 0;
}

static void
luks_close(struct vimg_node *node)
{
    struct luks_state *s = node->state;

    vimg_sector_pool_free(s->pool);
    vimg_luks_free(s->luks);
}

static int64_t
luks_length(struct vimg_node *node, struct vimg_error *err)
{
    struct luks_state *s = node->state;
    int64_t len = vimg_node_length(node->file, err);

    if (len < 0)
        return len;
    return (uint64_t)len > s->payload_offset ? len - (int64_t)s->payload_offset : 0;
}

/* Large buffers are encrypted or decrypted by the pool's workers. */
static int
luks_crypt(struct luks_state *s, bool is_enc, uint64_t offset, uint8_t *buf, size_t len,
           struct vimg_error *err)
{
    return vimg_sector_pool_crypt(s->pool, vimg_luks_cipher(s->luks), is_enc,
                                  offset / VIMG_CRYPT_SECTOR_SIZE, buf, len, err);
}

/* Copies between an I/O vector (from byte skip on) and a flat buffer. */
static void
luks_iov_copy(const struct iovec *iov, int n_iov, uint64_t skip, uint8_t *buf, size_t len,
              bool to_iov)
{
    for (int i = 0; i < n_iov && len; i++) {
        size_t n = iov[i].iov_len;
        if (skip >= n) {
            skip -= n;
            continue;
        }
        n -= skip;
        if (n > len)
            n = len;
        if (to_iov)
            memcpy((uint8_t *)iov[i].iov_base + skip, buf, n);
        else
            memcpy(buf, (uint8_t *)iov[i].iov_base + skip, n);
        buf += n;
        len -= n;
        skip = 0;
    }
}

static int
luks_preadv(struct vimg_node *node, uint64_t offset, uint64_t bytes, const struct iovec *iov,
            int n_iov, unsigned flags, struct vimg_error *err)
{
    struct luks_state *s = node->state;
    size_t cap = bytes < LUKS_CHUNK ? (size_t)bytes : LUKS_CHUNK;
    uint8_t *buf = malloc(cap ? cap : 1);
    int ret = 0;

    if (!buf)
        return vimg_error_set(err, ENOMEM, "Out of memory");
    for (uint64_t done = 0; done < bytes && ret == 0;) {
        size_t n = bytes - done < cap ? (size_t)(bytes - done) : cap;
        if ((ret = vimg_node_pread(node->file, s->payload_offset + offset + done, buf, n,
                                   flags, err)) < 0 ||
            (ret = luks_crypt(s, false, offset + done, buf, n, err)) < 0)
            break;
        luks_iov_copy(iov, n_iov, done, buf, n, true);
        done += n;
    }
    free(buf);
    return ret;
}

static int
luks_pwritev(struct vimg_node *node, uint64_t offset, uint64_t bytes, const struct iovec *iov,
             int n_iov, unsigned flags, struct vimg_error *err)
{
    struct luks_state *s = node->state;
    size_t cap = bytes < LUKS_CHUNK ? (size_t)bytes : LUKS_CHUNK;
    uint8_t *buf = malloc(cap ? cap : 1);
    int ret = 0;

    if (!buf)
        return vimg_error_set(err, ENOMEM, "Out of memory");
    for (uint64_t done = 0; done < bytes && ret == 0;) {
        size_t n = bytes - done < cap ? (size_t)(bytes - done) : cap;
        luks_iov_copy(iov, n_iov, done, buf, n, false);
        if ((ret = luks_crypt(s, true, offset + done, buf, n, err)) < 0 ||
            (ret = vimg_node_pwrite(node->file, s->payload_offset + offset + done, buf, n,
                                    flags, err)) < 0)
            break;
        done += n;
    }
    free(buf);
    return ret;
}

static int
luks_truncate(struct vimg_node *node, uint64_t size, bool is_exact, int prealloc,
              struct vimg_error *err)
{
    struct luks_state *s = node->state;

    if (size > (uint64_t)INT64_MAX - s->payload_offset)
        return vimg_error_set(err, EINVAL, "Image size is too large");
    return vimg_node_truncate(node->file, s->payload_offset + size, is_exact,
                              vimg_prealloc_name(prealloc), err);
}

static int
luks_info(struct vimg_node *node, json_t **format_specific, struct vimg_error *err)
{
    struct luks_state *s = node->state;
    json_t *spec = json_object(), *data = vimg_luks_info(s->luks);

    if (!spec || !data) {
        json_decref(spec);
        json_decref(data);
        return vimg_error_set(err, ENOMEM, "Out of memory");
    }
    json_object_set_new(spec, "type", json_string("luks"));
    json_object_set_new(spec, "data", data);
    *format_specific = spec;
    return 0;
}

/* In the order qemu-img prints them after "Formatting ..."; `-o help` sorts them. */
static const struct vimg_opt_desc luks_create_opts[] = {
    { "size", VIMG_OPT_SIZE, "Virtual disk size", NULL },
    { "key-secret", VIMG_OPT_STRING, "ID of the secret that provides the keyslot passphrase",
      NULL },
    { "cipher-alg", VIMG_OPT_STRING, "Name of encryption cipher algorithm", NULL },
    { "cipher-mode", VIMG_OPT_STRING, "Name of encryption cipher mode", NULL },
    { "ivgen-alg", VIMG_OPT_STRING, "Name of IV generator algorithm", NULL },
    { "ivgen-hash-alg", VIMG_OPT_STRING, "Name of IV generator hash algorithm", NULL },
    { "hash-alg", VIMG_OPT_STRING, "Name of encryption hash algorithm", NULL },
    { "iter-time", VIMG_OPT_NUMBER, "Time to spend in PBKDF in milliseconds", NULL },
    { NULL, 0, NULL, NULL },
};

/* Like qemu-img, a failed creation leaves no file behind (plain files only). */
static void
luks_remove_storage(const char *filename)
{
    if (strcmp(vimg_protocol_guess(filename)->name, "file") != 0)
        return;
    if (strncmp(filename, "file:", 5) == 0)
        filename += 5;
    (void)unlink(filename);
}

struct luks_create_params {
    uint64_t size;
    struct vimg_luks_create_opts luks;
    int prealloc;
};

static int
luks_parse_create(struct vimg_opts *opts, struct luks_create_params *p,
                  struct vimg_error *err)
{
    const char *prealloc = vimg_opts_get(opts, "preallocation");
    int ret;

    memset(p, 0, sizeof(*p));
    if (!vimg_opts_has(opts, "size"))
        return vimg_error_set(err, EINVAL, "Image creation needs a size parameter");
    if ((ret = vimg_opts_get_size(opts, "size", 0, &p->size, err)) < 0 ||
        (ret = vimg_luks_parse_create_opts(opts, "", &p->luks, err)) < 0)
        return ret;
    if (prealloc && vimg_prealloc_parse(prealloc, &p->prealloc, err) < 0)
        return -EINVAL;
    /* There is no metadata to preallocate: QEMU treats it as off. */
    if (p->prealloc == VIMG_PREALLOC_METADATA)
        p->prealloc = VIMG_PREALLOC_OFF;
    if (p->size > (uint64_t)INT64_MAX)
        return vimg_error_set(err, EINVAL, "Image size is too large");
    return 0;
}

/* Writes header and key slot 0, then sizes the file for the payload. */
static int
luks_format(const char *filename, const struct luks_create_params *p, const char *pass,
            size_t pass_len, struct vimg_error *err)
{
    struct vimg_node *file;
    struct vimg_luks *luks = NULL;
    uint64_t payload;
    int ret;

    if ((ret = vimg_luks_check_create_opts(&p->luks, err)) < 0)
        return ret;
    ret = vimg_open(&file, filename, NULL, NULL,
                    VIMG_OPEN_RDWR | VIMG_OPEN_RESIZE | VIMG_OPEN_PROTOCOL, err);
    if (ret < 0)
        return ret;
    ret = vimg_luks_create(&luks, &p->luks, pass, pass_len, luks_write_new, file, err);
    if (ret == 0) {
        payload = vimg_luks_payload_offset(luks);
        if (p->size > (uint64_t)INT64_MAX - payload)
            ret = vimg_error_set(err, EINVAL, "Image size is too large");
        else
            ret = vimg_node_truncate(file, payload + p->size, true,
                                     vimg_prealloc_name(p->prealloc), err);
    }
    if (ret == 0)
        ret = vimg_node_flush(file, err);
    vimg_luks_free(luks);
    vimg_close(file);
    return ret;
}

static int
luks_create(const char *filename, struct vimg_opts *opts, struct vimg_error *err)
{
    struct luks_create_params p;
    const char *key_secret = vimg_opts_get(opts, "key-secret");
    char *pass = NULL;
    size_t pass_len = 0;
    int ret;

    if ((ret = luks_parse_create(opts, &p, err)) < 0)
        return ret;
    if ((ret = vimg_create_file_empty(filename, opts, err)) < 0)
        return ret;
    if ((ret = luks_get_passphrase(key_secret, &pass, &pass_len, err)) == 0)
        ret = luks_format(filename, &p, pass, pass_len, err);
    luks_free_passphrase(pass, pass_len);
    if (ret < 0)
        luks_remove_storage(filename);
    return ret;
}

/* A new volume takes its header and key slots, then the payload, all preallocated or not. */
static int
luks_measure(struct vimg_opts *opts, struct vimg_node *in, uint64_t size,
             struct vimg_measure *out, struct vimg_error *err)
{
    struct vimg_luks_create_opts o;
    char *pass = NULL;
    size_t pass_len = 0;
    int ret;

    (void)in;
    vimg_opts_get(opts, "preallocation");
    if ((ret = vimg_luks_parse_create_opts(opts, "", &o, err)) < 0 ||
        (ret = luks_get_passphrase(vimg_opts_get(opts, "key-secret"), &pass, &pass_len,
                                   err)) < 0)
        return ret;
    luks_free_passphrase(pass, pass_len);
    out->required = vimg_luks_header_len(&o) + size;
    out->fully_allocated = out->required;
    return 0;
}

/* Key slot changes (amend -o state=...,keyslot=...,new-secret=...,old-secret=...). */
static int
luks_amend(struct vimg_node *node, struct vimg_opts *opts, bool is_forced,
           vimg_progress_fn *progress, void *opaque, struct vimg_error *err)
{
    struct luks_state *s = node->state;
    int ret;

    (void)progress;     /* QEMU's LUKS amend reports no progress either */
    (void)opaque;
    ret = vimg_luks_amend(s->luks, opts, "", is_forced, luks_read_header, luks_write_header,
                          node->file, err);
    return ret < 0 ? ret : vimg_node_flush(node->file, err);
}

static const char *const luks_strong_opts[] = { "key-secret", NULL };

const struct vimg_driver vimg_luks_driver = {
    .name = "luks",
    .kind = VIMG_DRIVER_FORMAT,
    .state_size = sizeof(struct luks_state),
    .strong_opts = luks_strong_opts,
    .probe = luks_probe,
    .open = luks_open,
    .close = luks_close,
    .create_opts = luks_create_opts,
    .create = luks_create,
    .preadv = luks_preadv,
    .pwritev = luks_pwritev,
    .length = luks_length,
    .truncate = luks_truncate,
    .info = luks_info,
    .measure = luks_measure,
    .amend = luks_amend,
};
