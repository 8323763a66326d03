/*
 * qcow2 encryption (qcow2.rst "Full disk encryption header pointer", "Data
 * encryption"): crypt_method 1, QEMU's legacy AES (src/crypto/aes-legacy.c),
 * and 2, LUKS with its header in clusters of the image that the 0x0537be77
 * extension points at (src/crypto/luks.c reads and writes it).
 *
 * Guest data is encrypted per 512-byte sector. The IV's sector number is,
 * as the spec says, the guest sector for AES and the host sector (offset in
 * the file that holds the data) for LUKS; qemu-img agrees. Metadata is never
 * encrypted; zero clusters and unallocated ones read as zeros or from the
 * backing file, which decrypts with its own key.
 *
 * Creation and open options and their texts follow qemu-img 7.2 as
 * observed. AES images are read, written and created as the tools allow;
 * QEMU's system emulators refuse them, the tools do not.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>

#include <vimg/object.h>

#include "crypto/aes-legacy.h"
#include "crypto/luks.h"
#include "crypto/sector-pool.h"
#include "formats/qcow2/qcow2.h"

#define QCOW2_CRYPT_AES 1u
#define QCOW2_CRYPT_LUKS 2u
#define QCOW2_CRYPT_EXT_SIZE 16u
/* Encrypted data moves through bounce buffers of at most this size. */
#define QCOW2_CRYPT_CHUNK (4u << 20)

struct qcow2_crypt {
    uint32_t method;                    /* QCOW2_CRYPT_AES or _LUKS */
    struct vimg_luks *luks;             /* LUKS: the header, unlocked unless opened NO_IO */
    struct vimg_sector_cipher *aes;     /* AES: the data cipher, NULL if opened NO_IO */
    struct vimg_sector_pool *pool;
};

struct qcow2_crypt_params {
    uint32_t method;
    struct vimg_luks_create_opts luks;
    char *pass;
    size_t pass_len;
};

static const char *
qcow2_crypt_name(uint32_t method)
{
    return method == QCOW2_CRYPT_AES ? "aes" : "luks";
}

/* The encryption header extension (its size checked on reading): LUKS only, aligned. */
static int
qcow2_check_crypto_ext(const struct qcow2_state *s, bool *has_ext, struct vimg_error *err)
{
    *has_ext = false;
    for (size_t i = 0; i < s->n_exts; i++) {
        const struct qcow2_ext *e = &s->exts[i];
        if (e->type != QCOW2_EXT_CRYPTO)
            continue;
        if (s->hdr.crypt_method != QCOW2_CRYPT_LUKS)
            return vimg_error_set(err, EINVAL, "CRYPTO header extension only expected with "
                                  "LUKS encryption method");
        if (s->crypto_offset % s->cluster_size)
            return vimg_error_set(err, EINVAL, "Encryption header offset '%" PRIu64 "' is not "
                                  "a multiple of cluster size '%" PRIu32 "'", s->crypto_offset,
                                  s->cluster_size);
        *has_ext = true;
    }
    return 0;
}

static void
qcow2_free_pass(char *pass, size_t len)
{
    if (pass)
        OPENSSL_cleanse(pass, len);
    free(pass);
}

/* ---- open ---- */

/* The LUKS header's reads: only inside the extension's range, beyond EOF zeros. */
static int
qcow2_crypt_read_hdr(void *opaque, uint64_t offset, void *buf, size_t len,
                     struct vimg_error *err)
{
    struct vimg_node *node = opaque;
    struct qcow2_state *s = node->state;

    if (offset > s->crypto_length || len > s->crypto_length - offset)
        return vimg_error_set(err, EINVAL, "Request for data outside of extension header");
    return qcow2_read_meta(node->file, s->crypto_offset + offset, buf, len, err);
}

/* encrypt.format and encrypt.key-secret are the only open options, as in QEMU. */
static int
qcow2_crypt_open_opts(struct qcow2_state *s, struct vimg_opts *enc, const char **secret,
                      struct vimg_error *err)
{
    const char *fmt = enc ? vimg_opts_get(enc, "format") : NULL;

    *secret = enc ? vimg_opts_get(enc, "key-secret") : NULL;
    for (size_t i = 0; enc && i < vimg_opts_count(enc); i++) {
        const char *key = vimg_opts_key_at(enc, i);
        if (strcmp(key, "format") != 0 && strcmp(key, "key-secret") != 0)
            return vimg_error_set(err, EINVAL, "Parameter '%s' is unexpected", key);
    }
    if (fmt && strcmp(fmt, qcow2_crypt_name(s->hdr.crypt_method)) != 0)
        return vimg_error_set(err, EINVAL, "Header reported '%s' encryption format but "
                              "options specify '%s'",
                              qcow2_crypt_name(s->hdr.crypt_method), fmt);
    return 0;
}

static int
qcow2_crypt_unlock(struct vimg_node *node, struct qcow2_crypt *c, const char *secret,
                   unsigned flags, struct vimg_error *err)
{
    char *pass = NULL;
    size_t pass_len = 0;
    int ret;

    if (!(flags & VIMG_OPEN_NO_IO)) {
        if (!secret)
            return vimg_error_set(err, EINVAL, "Parameter 'encrypt.key-secret' is required "
                                  "for cipher");
        if ((ret = vimg_secret_lookup(secret, &pass, &pass_len, err)) < 0)
            return ret;
    }
    if (c->method == QCOW2_CRYPT_LUKS)
        ret = vimg_luks_open(&c->luks, qcow2_crypt_read_hdr, node, pass, pass_len, err);
    else
        ret = pass ? vimg_aes_legacy_new(&c->aes, pass, pass_len, err) : 0;
    qcow2_free_pass(pass, pass_len);
    return ret;
}

int
qcow2_crypt_open(struct vimg_node *node, struct vimg_opts *opts, unsigned flags,
                 struct vimg_error *err)
{
    struct qcow2_state *s = node->state;
    const char *secret = NULL;
    struct qcow2_crypt *c;
    bool has_ext;
    int ret;

    if (s->hdr.crypt_method != 0 &&
        (ret = qcow2_crypt_open_opts(s, vimg_opts_get_dict(opts, "encrypt"), &secret,
                                     err)) < 0)
        return ret;
    if ((ret = qcow2_check_crypto_ext(s, &has_ext, err)) < 0 || s->hdr.crypt_method == 0)
        return ret;
    if (s->hdr.crypt_method == QCOW2_CRYPT_LUKS && !has_ext)
        return vimg_error_set(err, EINVAL, "Missing CRYPTO header for crypt method 2");
    if (!(c = calloc(1, sizeof(*c))) || !(c->pool = vimg_sector_pool_new())) {
        free(c);
        return vimg_error_set(err, ENOMEM, "Out of memory");
    }
    c->method = s->hdr.crypt_method;
    s->crypt = c;
    if ((ret = qcow2_crypt_unlock(node, c, secret, flags, err)) < 0) {
        qcow2_crypt_close(s);
        return ret;
    }
    node->request_alignment = VIMG_CRYPT_SECTOR_SIZE;
    node->is_encrypted = true;
    return 0;
}

void
qcow2_crypt_close(struct qcow2_state *s)
{
    struct qcow2_crypt *c = s->crypt;

    if (!c)
        return;
    vimg_luks_free(c->luks);
    vimg_sector_cipher_free(c->aes);
    vimg_sector_pool_free(c->pool);
    free(c);
    s->crypt = NULL;
}

/* ---- data ---- */

int
qcow2_crypt_buf(struct vimg_node *node, bool is_enc, uint64_t host, uint64_t guest,
                uint8_t *buf, uint64_t len, struct vimg_error *err)
{
    struct qcow2_state *s = node->state;
    struct qcow2_crypt *c = s->crypt;
    struct vimg_sector_cipher *cipher = c->luks ? vimg_luks_cipher(c->luks) : c->aes;
    uint64_t at = c->method == QCOW2_CRYPT_LUKS ? host : guest;

    if (!cipher)
        return vimg_error_set(err, EIO, "The image was opened without its key");
    if (at % VIMG_CRYPT_SECTOR_SIZE || len % VIMG_CRYPT_SECTOR_SIZE)
        return vimg_error_set(err, EIO, "Encrypted I/O at 0x%" PRIx64 " (%" PRIu64 " bytes) "
                              "is not sector aligned", at, len);
    return vimg_sector_pool_crypt(c->pool, cipher, is_enc, at / VIMG_CRYPT_SECTOR_SIZE, buf,
                                  (size_t)len, err);
}

int
qcow2_crypt_read(struct vimg_node *node, struct vimg_node *data, uint64_t host, uint64_t guest,
                 uint64_t bytes, const struct iovec *iov, int n_iov, struct vimg_error *err)
{
    size_t cap = bytes < QCOW2_CRYPT_CHUNK ? (size_t)bytes : QCOW2_CRYPT_CHUNK;
    uint8_t *buf = malloc(cap ? cap : 1);
    int ret = 0;

    if (!buf)
        return vimg_error_set(err, ENOMEM, "Out of memory");
    for (uint64_t done = 0; done < bytes && ret == 0;) {
        size_t n = bytes - done < cap ? (size_t)(bytes - done) : cap;
        if ((ret = vimg_node_pread(data, host + done, buf, n, 0, err)) < 0 ||
            (ret = qcow2_crypt_buf(node, false, host + done, guest + done, buf, n, err)) < 0)
            break;
        vimg_buf_to_iov(buf, n, iov, n_iov, done);
        done += n;
    }
    free(buf);
    return ret;
}

int
qcow2_crypt_write(struct vimg_node *node, struct vimg_node *data, uint64_t host,
                  uint64_t guest, uint64_t bytes, const struct iovec *iov, int n_iov,
                  struct vimg_error *err)
{
    size_t cap = bytes < QCOW2_CRYPT_CHUNK ? (size_t)bytes : QCOW2_CRYPT_CHUNK;
    uint8_t *buf = malloc(cap ? cap : 1);
    int ret = 0;

    if (!buf)
        return vimg_error_set(err, ENOMEM, "Out of memory");
    for (uint64_t done = 0; done < bytes && ret == 0;) {
        size_t n = bytes - done < cap ? (size_t)(bytes - done) : cap;
        vimg_iov_to_buf(iov, n_iov, done, buf, n);
        if ((ret = qcow2_crypt_buf(node, true, host + done, guest + done, buf, n, err)) < 0 ||
            (ret = vimg_node_pwrite(data, host + done, buf, n, 0, err)) < 0)
            break;
        done += n;
    }
    free(buf);
    return ret;
}

static int qcow2_crypt_write_hdr(void *opaque, uint64_t offset, const void *buf, size_t len,
                                 struct vimg_error *err);

/* ---- amend ---- */

int
qcow2_crypt_amend(struct vimg_node *node, struct vimg_opts *opts, bool is_forced,
                  struct vimg_error *err)
{
    struct qcow2_state *s = node->state;
    struct vimg_opts *enc = vimg_opts_get_dict(opts, "encrypt");
    int ret;

    if (!enc)
        return 0;
    if (!s->crypt)
        return vimg_error_set(err, EINVAL, "Can't amend encryption options - encryption not "
                              "present");
    if (!s->crypt->luks)
        return vimg_error_set(err, ENOTSUP, "Only LUKS encryption options can be amended");
    ret = vimg_luks_amend(s->crypt->luks, enc, "encrypt.", is_forced, qcow2_crypt_read_hdr,
                          qcow2_crypt_write_hdr, node, err);
    return ret < 0 ? ret : vimg_node_flush(node->file, err);
}

/* ---- info ---- */

/* QEMU's "encrypt" of the qcow2 info: the LUKS data with "format" before "cipher-mode". */
json_t *
qcow2_crypt_info(const struct qcow2_state *s)
{
    const struct qcow2_crypt *c = s->crypt;
    json_t *out = json_object(), *luks, *v;
    const char *key;

    if (!c || !out)
        return out;
    if (c->method == QCOW2_CRYPT_AES || !c->luks) {
        json_object_set_new(out, "format", json_string(qcow2_crypt_name(c->method)));
        return out;
    }
    if (!(luks = vimg_luks_info(c->luks)))
        return out;
    json_object_foreach(luks, key, v) {
        if (strcmp(key, "cipher-mode") == 0)
            json_object_set_new(out, "format", json_string("luks"));
        json_object_set(out, key, v);
    }
    json_decref(luks);
    return out;
}

/* ---- create ---- */

void
qcow2_crypt_params_free(struct qcow2_crypt_params *p)
{
    if (!p)
        return;
    qcow2_free_pass(p->pass, p->pass_len);
    free(p);
}

/* Which method the options ask for: 0 none; QEMU's texts for conflicts. */
static int
qcow2_crypt_method(struct vimg_opts *opts, struct vimg_opts *enc, uint32_t *method,
                   struct vimg_error *err)
{
    const char *fmt = enc ? vimg_opts_get(enc, "format") : NULL;
    bool is_aes = false;
    int ret;

    *method = 0;
    if ((ret = vimg_opts_get_bool(opts, "encryption", false, &is_aes, err)) < 0)
        return ret;
    if (is_aes && fmt)
        return vimg_error_set(err, EINVAL, "'encrypt.format' and its alias 'encryption' can't "
                              "be used at the same time");
    if (is_aes)
        fmt = "aes";
    if (!fmt && enc && !vimg_opts_is_empty(enc))
        return vimg_error_set(err, EINVAL, "Parameter 'encrypt.format' is missing");
    if (!fmt)
        return 0;
    if (strcmp(fmt, "aes") != 0 && strcmp(fmt, "luks") != 0)
        return vimg_error_set(err, EINVAL, "Parameter 'format' does not accept value '%s'",
                              fmt);
    *method = strcmp(fmt, "aes") == 0 ? QCOW2_CRYPT_AES : QCOW2_CRYPT_LUKS;
    return 0;
}

/* AES takes a key secret alone: every other encrypt.* key is named, in option order. */
static int
qcow2_crypt_aes_opts(struct vimg_opts *enc, struct vimg_error *err)
{
    for (size_t i = 0; enc && i < vimg_opts_count(enc); i++) {
        const char *key = vimg_opts_key_at(enc, i);
        if (strcmp(key, "format") != 0 && strcmp(key, "key-secret") != 0)
            return vimg_error_set(err, EINVAL, "Parameter 'encrypt.%s' is unexpected", key);
    }
    return 0;
}

/*
 * Parses and checks the encrypt.* creation options and looks the secret up,
 * all before anything is created; *out stays NULL without encryption.
 */
int
qcow2_crypt_parse_create(struct vimg_opts *opts, struct qcow2_crypt_params **out,
                         struct vimg_error *err)
{
    struct vimg_opts *enc = vimg_opts_get_dict(opts, "encrypt");
    const char *secret = enc ? vimg_opts_get(enc, "key-secret") : NULL;
    struct qcow2_crypt_params *p;
    uint32_t method;
    int ret;

    *out = NULL;
    if ((ret = qcow2_crypt_method(opts, enc, &method, err)) < 0 || method == 0)
        return ret;
    if (!(p = calloc(1, sizeof(*p))))
        return vimg_error_set(err, ENOMEM, "Out of memory");
    p->method = method;
    if (method == QCOW2_CRYPT_AES)
        ret = qcow2_crypt_aes_opts(enc, err);
    else
        ret = vimg_luks_parse_create_opts(enc, "", &p->luks, err);
    if (ret == 0 && !secret)
        ret = vimg_error_set(err, EINVAL, "Parameter 'encrypt.key-secret' is required for "
                             "cipher");
    if (ret == 0)
        ret = vimg_secret_lookup(secret, &p->pass, &p->pass_len, err);
    if (ret == 0 && method == QCOW2_CRYPT_LUKS)
        ret = vimg_luks_check_create_opts(&p->luks, err);
    if (ret < 0) {
        qcow2_crypt_params_free(p);
        return ret;
    }
    *out = p;
    return 0;
}

int
qcow2_crypt_measure(struct vimg_opts *opts, uint64_t *header_len, struct vimg_error *err)
{
    struct qcow2_crypt_params *p;
    uint32_t method;
    int ret;

    /* As qemu-img, only LUKS needs its secret (and the rest of its options) here. */
    *header_len = 0;
    if ((ret = qcow2_crypt_method(opts, vimg_opts_get_dict(opts, "encrypt"), &method,
                                  err)) < 0 || method != QCOW2_CRYPT_LUKS)
        return ret;
    if ((ret = qcow2_crypt_parse_create(opts, &p, err)) < 0 || !p)
        return ret;
    if (p->method == QCOW2_CRYPT_LUKS)
        *header_len = vimg_luks_header_len(&p->luks);
    qcow2_crypt_params_free(p);
    return 0;
}

/* The LUKS header's writes while creating: [0, crypto_length) of its clusters. */
static int
qcow2_crypt_write_hdr(void *opaque, uint64_t offset, const void *buf, size_t len,
                      struct vimg_error *err)
{
    struct vimg_node *node = opaque;
    struct qcow2_state *s = node->state;

    if (offset > s->crypto_length || len > s->crypto_length - offset)
        return vimg_error_set(err, EINVAL, "Request for data outside of extension header");
    return qcow2_pwrite_file(node->file, s->crypto_offset + offset, buf, len, err);
}

/* Records the extension before the feature table, where QEMU writes it. */
static int
qcow2_crypt_add_ext(struct qcow2_state *s, struct vimg_error *err)
{
    struct qcow2_ext *e = realloc(s->exts, (s->n_exts + 1) * sizeof(*e));
    size_t at = 0;

    if (!e)
        return vimg_error_set(err, ENOMEM, "Out of memory");
    s->exts = e;
    while (at < s->n_exts && e[at].type != QCOW2_EXT_FEATURE_TABLE)
        at++;
    memmove(e + at + 1, e + at, (s->n_exts - at) * sizeof(*e));
    s->n_exts++;
    e[at].type = QCOW2_EXT_CRYPTO;
    e[at].len = QCOW2_CRYPT_EXT_SIZE;
    if (!(e[at].data = malloc(QCOW2_CRYPT_EXT_SIZE)))
        return vimg_error_set(err, ENOMEM, "Out of memory");
    qcow2_put_be64(e[at].data, s->crypto_offset);
    qcow2_put_be64(e[at].data + 8, s->crypto_length);
    return 0;
}

/* Clusters for the LUKS header after everything else, zero-filled, then the header. */
static int
qcow2_crypt_format_luks(struct vimg_node *node, const struct qcow2_crypt_params *p,
                        struct vimg_error *err)
{
    struct qcow2_state *s = node->state;
    uint64_t len = vimg_luks_header_len(&p->luks);
    uint64_t n = qcow2_align_up(len, s->cluster_size) / s->cluster_size;
    struct vimg_luks *luks = NULL;
    uint64_t off;
    int ret;

    if ((ret = qcow2_alloc_clusters(node, n, &off, err)) < 0 ||
        (ret = qcow2_flush_metadata(node, err)) < 0 ||
        (ret = qcow2_grow_file(node->file, off + n * s->cluster_size, err)) < 0 ||
        (ret = vimg_node_pwrite_zeroes(node->file, off, n * s->cluster_size, 0, err)) < 0)
        return ret;
    s->crypto_offset = off;
    s->crypto_length = len;
    ret = vimg_luks_create(&luks, &p->luks, p->pass, p->pass_len, qcow2_crypt_write_hdr, node,
                           err);
    vimg_luks_free(luks);
    if (ret < 0 || (ret = qcow2_crypt_add_ext(s, err)) < 0)
        return ret;
    s->hdr.crypt_method = QCOW2_CRYPT_LUKS;
    return qcow2_write_header(node, err);
}

int
qcow2_crypt_format_new(struct vimg_node *node, const struct qcow2_crypt_params *p,
                       struct vimg_error *err)
{
    struct qcow2_state *s = node->state;
    uint8_t be[4];
    int ret;

    pthread_mutex_lock(&s->lock);
    if (p->method == QCOW2_CRYPT_LUKS) {
        ret = qcow2_crypt_format_luks(node, p, err);
    } else {
        s->hdr.crypt_method = QCOW2_CRYPT_AES;
        qcow2_put_be32(be, QCOW2_CRYPT_AES);
        ret = qcow2_write_header_field(node, QCOW2_OFF_CRYPT_METHOD, be, sizeof(be), err);
    }
    pthread_mutex_unlock(&s->lock);
    return ret;
}
