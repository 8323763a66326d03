/*
 * The qcow (version 1) format, read-write with create, as in libyal/libqcow
 * "QEMU Copy-On-Write file format.asciidoc" (SPECS.md, "QCOW", version 1
 * sections): a 48-byte big-endian header, the backing file name after it,
 * an L1 table of BE64 L2 table offsets and L2 tables of BE64 cluster
 * offsets, where bit 63 marks a cluster compressed with raw deflate, its
 * byte size stored in the cluster_bits bits below bit 63.
 *
 * New L2 tables and clusters go at the end of the file, rounded up to the
 * cluster size, in the order qemu-img puts them, so that the same writes
 * give the same file. Table entries are read and written one at a time
 * through a small cache of 4 KiB table chunks (table-cache.h), so that no
 * table size from disk sizes an allocation; reads of clusters stored one
 * after another go to the file as one request.
 *
 * Compressed writes deflate one cluster (raw deflate, 4 KiB window, as
 * qemu-img) and put it at the very end of the file, unaligned; a cluster
 * that does not shrink is written plain.
 *
 * Legacy AES encryption: AES-128-CBC per 512-byte sector, the IV the guest
 * sector number (plain64), the key the passphrase cut or zero-padded to 16
 * bytes. Compressed clusters are stored unencrypted, as qemu-img does.
 *
 * Left out: zero writes, discard, check (qemu-img has none of them either).
 */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <zlib.h>

#include "core/driver.h"
#include "crypto/aes-legacy.h"
#include "crypto/cipher.h"
#include "formats/table-cache.h"
#include <vimg/object.h>

#define QCOW_MAGIC              UINT32_C(0x514649fb)    /* "QFI\xfb" */
#define QCOW_VERSION            1
#define QCOW_HEADER_BYTES       48
#define QCOW_SECTOR_SIZE        512
#define QCOW_MIN_CLUSTER_BITS   9
#define QCOW_MAX_CLUSTER_BITS   16
#define QCOW_MAX_BACKING_NAME   1023
#define QCOW_CRYPT_NONE         0
#define QCOW_CRYPT_AES          1
#define QCOW_OFLAG_COMPRESSED   (UINT64_C(1) << 63)
#define QCOW_MAX_REQUEST_END    (UINT64_C(0x7fffffffffffffff) & ~UINT64_C(0x3fffffff))
#define QCOW_MAX_L1_ENTRIES     (UINT64_C(0x7fffffff) / 8)

/* Header field offsets (spec "File header – version 1"). */
#define QCOW_OFF_MAGIC          0       /* BE32 */
#define QCOW_OFF_VERSION        4       /* BE32 */
#define QCOW_OFF_BACKING_OFFSET 8       /* BE64 */
#define QCOW_OFF_BACKING_SIZE   16      /* BE32 */
#define QCOW_OFF_MTIME          20      /* BE32 */
#define QCOW_OFF_SIZE           24      /* BE64 */
#define QCOW_OFF_CLUSTER_BITS   32      /* u8 */
#define QCOW_OFF_L2_BITS        33      /* u8 */
#define QCOW_OFF_CRYPT_METHOD   36      /* BE32 */
#define QCOW_OFF_L1_OFFSET      40      /* BE64 */

struct qcow_header {
    uint32_t magic;
    uint32_t version;
    uint64_t backing_file_offset;
    uint32_t backing_file_size;
    uint32_t mtime;
    uint64_t size;
    uint8_t cluster_bits;
    uint8_t l2_bits;
    uint32_t crypt_method;
    uint64_t l1_table_offset;
};

struct qcow_state {
    struct qcow_header h;
    uint64_t cluster_size;
    uint64_t l2_entries;        /* entries per L2 table */
    uint64_t l1_entries;
    uint64_t file_end;          /* the file's length: new tables and clusters go past it */
    struct vimg_sector_cipher *cipher;  /* AES images opened with their key, else NULL */
    struct vimg_table_cache tables;     /* L1 and L2 entries */
    pthread_mutex_t lock;       /* protects tables, the table cache and file_end */
};

static uint32_t
qcow_be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | (uint32_t)p[3];
}

static uint64_t
qcow_be64(const uint8_t *p)
{
    return (uint64_t)qcow_be32(p) << 32 | (uint64_t)qcow_be32(p + 4);
}

static void
qcow_put_be32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (24 - 8 * i));
}

static void
qcow_put_be64(uint8_t *p, uint64_t v)
{
    qcow_put_be32(p, (uint32_t)(v >> 32));
    qcow_put_be32(p + 4, (uint32_t)v);
}

static void
qcow_decode_header(const uint8_t *b, struct qcow_header *h)
{
    h->magic = qcow_be32(b + QCOW_OFF_MAGIC);
    h->version = qcow_be32(b + QCOW_OFF_VERSION);
    h->backing_file_offset = qcow_be64(b + QCOW_OFF_BACKING_OFFSET);
    h->backing_file_size = qcow_be32(b + QCOW_OFF_BACKING_SIZE);
    h->mtime = qcow_be32(b + QCOW_OFF_MTIME);
    h->size = qcow_be64(b + QCOW_OFF_SIZE);
    h->cluster_bits = b[QCOW_OFF_CLUSTER_BITS];
    h->l2_bits = b[QCOW_OFF_L2_BITS];
    h->crypt_method = qcow_be32(b + QCOW_OFF_CRYPT_METHOD);
    h->l1_table_offset = qcow_be64(b + QCOW_OFF_L1_OFFSET);
}

static void
qcow_encode_header(const struct qcow_header *h, uint8_t *b)
{
    memset(b, 0, QCOW_HEADER_BYTES);
    qcow_put_be32(b + QCOW_OFF_MAGIC, h->magic);
    qcow_put_be32(b + QCOW_OFF_VERSION, h->version);
    qcow_put_be64(b + QCOW_OFF_BACKING_OFFSET, h->backing_file_offset);
    qcow_put_be32(b + QCOW_OFF_BACKING_SIZE, h->backing_file_size);
    qcow_put_be32(b + QCOW_OFF_MTIME, h->mtime);
    qcow_put_be64(b + QCOW_OFF_SIZE, h->size);
    b[QCOW_OFF_CLUSTER_BITS] = h->cluster_bits;
    b[QCOW_OFF_L2_BITS] = h->l2_bits;
    qcow_put_be32(b + QCOW_OFF_CRYPT_METHOD, h->crypt_method);
    qcow_put_be64(b + QCOW_OFF_L1_OFFSET, h->l1_table_offset);
}

static int
qcow_probe(const uint8_t *buf, size_t len, const char *filename)
{
    (void)filename;
    if (len < QCOW_HEADER_BYTES)
        return 0;
    return qcow_be32(buf + QCOW_OFF_MAGIC) == QCOW_MAGIC &&
           qcow_be32(buf + QCOW_OFF_VERSION) == QCOW_VERSION ? 100 : 0;
}

static uint64_t
qcow_round_up(uint64_t v, uint64_t align)
{
    return (v + align - 1) / align * align;
}

/* The checks and their order are qemu-img's, so that the messages match. */
static int
qcow_check_header(struct qcow_state *s, struct vimg_error *err)
{
    const struct qcow_header *h = &s->h;
    unsigned shift;

    if (h->magic != QCOW_MAGIC)
        return vimg_error_set(err, EINVAL, "Image not in qcow format");
    if (h->version != QCOW_VERSION)
        return vimg_error_set(err, ENOTSUP, "qcow (v1) does not support qcow version %" PRIu32
                              "%s", h->version, h->version == 2 || h->version == 3
                              ? "\nTry the 'qcow2' driver instead." : "");
    if (h->size <= 1)
        return vimg_error_set(err, EINVAL, "Image size is too small (must be at least 2 bytes)");
    if (h->cluster_bits < QCOW_MIN_CLUSTER_BITS || h->cluster_bits > QCOW_MAX_CLUSTER_BITS)
        return vimg_error_set(err, EINVAL, "Cluster size must be between 512 and 64k");
    if (h->l2_bits < QCOW_MIN_CLUSTER_BITS - 3 || h->l2_bits > QCOW_MAX_CLUSTER_BITS - 3)
        return vimg_error_set(err, EINVAL, "L2 table size must be between 512 and 64k");
    if (h->crypt_method > QCOW_CRYPT_AES)
        return vimg_error_set(err, EINVAL, "invalid encryption method in qcow header");
    shift = (unsigned)h->cluster_bits + h->l2_bits;
    s->cluster_size = UINT64_C(1) << h->cluster_bits;
    s->l2_entries = UINT64_C(1) << h->l2_bits;
    s->l1_entries = h->size / (UINT64_C(1) << shift) +
                    (h->size % (UINT64_C(1) << shift) != 0);
    if (s->l1_entries > QCOW_MAX_L1_ENTRIES)
        return vimg_error_set(err, EINVAL, "Image too large");
    return 0;
}

static int
qcow_read_backing_name(struct vimg_node *node, struct vimg_error *err)
{
    struct qcow_state *s = node->state;
    char *name;
    int ret;

    if (s->h.backing_file_offset == 0)
        return 0;
    if (s->h.backing_file_size > QCOW_MAX_BACKING_NAME)
        return vimg_error_set(err, EINVAL, "Backing file name too long");
    if (!(name = calloc(1, (size_t)s->h.backing_file_size + 1)))
        return vimg_error_set(err, ENOMEM, "Out of memory");
    ret = vimg_node_pread_padded(node->file, s->h.backing_file_offset, name,
                                 s->h.backing_file_size, err);
    if (ret < 0 || name[0] == '\0') {
        free(name);
        return ret;
    }
    node->backing_filename = name;
    return 0;
}

/* The legacy key from the secret: the passphrase up to its first NUL, as QEMU reads it. */
static int
qcow_new_cipher(const char *secret_id, struct vimg_sector_cipher **out, struct vimg_error *err)
{
    char *pass = NULL;
    size_t len = 0;
    int ret;

    if ((ret = vimg_secret_lookup(secret_id, &pass, &len, err)) < 0)
        return ret;
    ret = vimg_aes_legacy_new(out, pass, strnlen(pass, len), err);
    memset(pass, 0, len);
    free(pass);
    return ret;
}

/* The encrypt.* open options, with qemu-img's checks and texts. */
static int
qcow_open_crypto(struct vimg_node *node, struct vimg_opts *opts, unsigned flags,
                 struct vimg_error *err)
{
    struct qcow_state *s = node->state;
    struct vimg_opts *enc = vimg_opts_get_dict(opts, "encrypt");
    const char *fmt = enc ? vimg_opts_get(enc, "format") : NULL;
    const char *secret = enc ? vimg_opts_get(enc, "key-secret") : NULL;

    if (s->h.crypt_method == QCOW_CRYPT_NONE) {
        if (fmt)
            return vimg_error_set(err, EINVAL, "No encryption in image header, but options "
                                  "specified format '%s'", fmt);
        return 0;
    }
    if (fmt && strcmp(fmt, "aes") != 0)
        return vimg_error_set(err, EINVAL, "Header reported 'aes' encryption format but "
                              "options specify '%s'", fmt);
    if (flags & VIMG_OPEN_NO_IO)
        return 0;
    if (!secret)
        return vimg_error_set(err, EINVAL, "Parameter 'encrypt.key-secret' is required for "
                              "cipher");
    return qcow_new_cipher(secret, &s->cipher, err);
}

static void
qcow_close(struct vimg_node *node)
{
    struct qcow_state *s = node->state;

    vimg_sector_cipher_free(s->cipher);
    s->cipher = NULL;
    vimg_table_cache_free(&s->tables);
    pthread_mutex_destroy(&s->lock);
}

static int
qcow_open(struct vimg_node *node, struct vimg_opts *opts, unsigned flags,
          struct vimg_error *err)
{
    struct qcow_state *s = node->state;
    uint8_t b[QCOW_HEADER_BYTES];
    int64_t file_len;
    int ret;

    if ((ret = vimg_node_pread_padded(node->file, 0, b, sizeof(b), err)) < 0)
        return ret;
    if ((file_len = vimg_node_length(node->file, err)) < 0)
        return (int)file_len;
    qcow_decode_header(b, &s->h);
    if ((ret = qcow_check_header(s, err)) < 0 ||
        (ret = qcow_open_crypto(node, opts, flags, err)) < 0)
        return ret;
    /* Reading the L1 table past QEMU's largest request end fails with a bare I/O error. */
    if (s->h.l1_table_offset > QCOW_MAX_REQUEST_END ||
        s->l1_entries * 8 > QCOW_MAX_REQUEST_END - s->h.l1_table_offset) {
        ret = vimg_error_set(err, EIO, "Could not open '%s': Input/output error",
                             node->filename);
        goto fail;
    }
    if ((ret = qcow_read_backing_name(node, err)) < 0 ||
        (ret = vimg_table_cache_init(&s->tables, node->file, err)) < 0)
        goto fail;
    s->file_end = (uint64_t)file_len;
    node->is_encrypted = s->h.crypt_method != QCOW_CRYPT_NONE;
    pthread_mutex_init(&s->lock, NULL);
    node->request_alignment = node->is_encrypted ? QCOW_SECTOR_SIZE : 1;
    node->cluster_size = (uint32_t)s->cluster_size;
    return 0;
fail:
    vimg_sector_cipher_free(s->cipher);
    s->cipher = NULL;
    return ret;
}

static int64_t
qcow_length(struct vimg_node *node, struct vimg_error *err)
{
    struct qcow_state *s = node->state;

    (void)err;
    return (int64_t)(s->h.size / QCOW_SECTOR_SIZE * QCOW_SECTOR_SIZE);
}

/* Entry index of the L1 table (is_l1) or of the L2 table at table. */
static int
qcow_read_entry(struct vimg_node *node, bool is_l1, uint64_t table, uint64_t index,
                uint64_t *out, struct vimg_error *err)
{
    struct qcow_state *s = node->state;
    uint64_t table_bytes = (is_l1 ? s->l1_entries : s->l2_entries) * 8;
    uint8_t raw[8];
    int ret;

    if ((ret = vimg_table_cache_read(&s->tables, table, table_bytes, index, raw, err)) < 0)
        return ret;
    *out = qcow_be64(raw);
    return 0;
}

static int
qcow_write_entry(struct vimg_node *node, uint64_t table, uint64_t index, uint64_t value,
                 struct vimg_error *err)
{
    struct qcow_state *s = node->state;
    uint8_t raw[8];

    qcow_put_be64(raw, value);
    return vimg_table_cache_write(&s->tables, table, index, raw, err);
}

/* Writes to the file outside the tables' entries: cached chunks there are stale. */
static int
qcow_pwrite_file(struct vimg_node *node, uint64_t offset, const void *buf, uint64_t bytes,
                 struct vimg_error *err)
{
    struct qcow_state *s = node->state;

    vimg_table_cache_drop(&s->tables, offset, bytes);
    return vimg_node_pwrite(node->file, offset, buf, bytes, 0, err);
}

/* The L2 table for cluster index (0: none) and the cluster's entry (0: none). */
static int
qcow_lookup(struct vimg_node *node, uint64_t cluster, uint64_t *l2, uint64_t *entry,
            struct vimg_error *err)
{
    struct qcow_state *s = node->state;
    int ret;

    *entry = 0;
    if ((ret = qcow_read_entry(node, true, s->h.l1_table_offset, cluster / s->l2_entries, l2,
                               err)) < 0 || *l2 == 0)
        return ret;
    return qcow_read_entry(node, false, *l2, cluster % s->l2_entries, entry, err);
}

/* Fills buf (one cluster) with the cluster a compressed entry describes. */
static int
qcow_read_compressed(struct vimg_node *node, uint64_t entry, uint8_t *buf,
                     struct vimg_error *err)
{
    struct qcow_state *s = node->state;
    unsigned size_shift = 63 - s->h.cluster_bits;
    uint64_t csize = (entry & ~QCOW_OFLAG_COMPRESSED) >> size_shift;
    uint64_t coffset = entry & ((UINT64_C(1) << size_shift) - 1);
    uint8_t *in;
    z_stream z;
    int ret, zret;

    /* csize has cluster_bits bits: below the cluster size. */
    if (!(in = malloc(csize ? csize : 1)))
        return vimg_error_set(err, ENOMEM, "Out of memory");
    if ((ret = vimg_node_pread_padded(node->file, coffset, in, csize, err)) < 0)
        goto out;
    memset(&z, 0, sizeof(z));
    if (inflateInit2(&z, -12) != Z_OK) {
        ret = vimg_error_set(err, ENOMEM, "Could not initialise zlib");
        goto out;
    }
    z.next_in = in;
    z.avail_in = (uInt)csize;
    z.next_out = buf;
    z.avail_out = (uInt)s->cluster_size;
    zret = inflate(&z, Z_FINISH);
    if ((zret != Z_STREAM_END && zret != Z_BUF_ERROR) || z.total_out != s->cluster_size)
        ret = vimg_error_set(err, EIO, "Compressed cluster at 0x%" PRIx64
                             " does not inflate to %" PRIu64 " bytes", coffset,
                             s->cluster_size);
    inflateEnd(&z);
out:
    free(in);
    return ret;
}

/*
 * Extends *len (the part of the request in the cluster at offset, whose
 * plain entry is entry) over the following clusters stored right after it,
 * up to bytes, so that they are read at once. Called with s->lock held.
 */
static int
qcow_extend_run(struct vimg_node *node, uint64_t offset, uint64_t bytes, uint64_t entry,
                uint64_t *len, struct vimg_error *err)
{
    struct qcow_state *s = node->state;
    uint64_t cs = s->cluster_size, l2, next;
    int ret;

    while (*len < bytes) {
        uint64_t pos = offset + *len;

        if ((ret = qcow_lookup(node, pos / cs, &l2, &next, err)) < 0)
            return ret;
        if (next & QCOW_OFLAG_COMPRESSED || next != entry + (pos / cs - offset / cs) * cs)
            break;
        *len += bytes - *len < cs ? bytes - *len : cs;
    }
    return 0;
}

static int
qcow_read(struct vimg_node *node, uint64_t offset, uint8_t *out, uint64_t bytes,
          struct vimg_error *err)
{
    struct qcow_state *s = node->state;
    uint8_t *cbuf = NULL;
    int ret = 0;

    if (node->is_encrypted && !s->cipher)
        return vimg_error_set(err, EACCES, "Parameter 'encrypt.key-secret' is required for "
                              "cipher");
    while (bytes && ret == 0) {
        uint64_t in_cluster = offset % s->cluster_size, l2, entry;
        uint64_t len = s->cluster_size - in_cluster < bytes ? s->cluster_size - in_cluster
                                                            : bytes;

        pthread_mutex_lock(&s->lock);
        ret = qcow_lookup(node, offset / s->cluster_size, &l2, &entry, err);
        if (ret == 0 && entry && !(entry & QCOW_OFLAG_COMPRESSED))
            ret = qcow_extend_run(node, offset, bytes, entry, &len, err);
        pthread_mutex_unlock(&s->lock);
        if (ret < 0)
            break;
        if (entry == 0) {
            memset(out, 0, len);
        } else if (entry & QCOW_OFLAG_COMPRESSED) {
            if (!cbuf && !(cbuf = malloc(s->cluster_size))) {
                ret = vimg_error_set(err, ENOMEM, "Out of memory");
                break;
            }
            if ((ret = qcow_read_compressed(node, entry, cbuf, err)) == 0)
                memcpy(out, cbuf + in_cluster, len);
        } else {
            ret = vimg_node_pread_padded(node->file, entry + in_cluster, out, len, err);
            if (ret == 0 && s->cipher)
                ret = vimg_sector_decrypt(s->cipher, offset / QCOW_SECTOR_SIZE, out, len, err);
        }
        offset += len;
        out += len;
        bytes -= len;
    }
    free(cbuf);
    return ret;
}

/* An empty L2 table at the end of the file, then the L1 entry pointing to it. */
static int
qcow_alloc_l2(struct vimg_node *node, uint64_t l1_index, uint64_t *l2, struct vimg_error *err)
{
    struct qcow_state *s = node->state;
    uint64_t table_bytes = s->l2_entries * 8, at = qcow_round_up(s->file_end, s->cluster_size);
    uint8_t *table;
    int ret;

    if (!(table = calloc(1, table_bytes)))
        return vimg_error_set(err, ENOMEM, "Out of memory");
    ret = qcow_pwrite_file(node, at, table, table_bytes, err);
    free(table);
    if (ret < 0)
        return ret;
    s->file_end = at + table_bytes;
    if ((ret = vimg_node_flush(node->file, err)) < 0 ||
        (ret = qcow_write_entry(node, s->h.l1_table_offset, l1_index, at, err)) < 0)
        return ret;
    *l2 = at;
    return 0;
}

/*
 * Writes a new cluster at the end of the file: what the compressed cluster,
 * else the backing file, held, with data at in_cluster on top. The data
 * reaches disk before the L2 entry: a crash leaks a cluster at worst.
 */
static int
qcow_alloc_cluster(struct vimg_node *node, uint64_t cluster, uint64_t l2, uint64_t entry,
                   uint64_t in_cluster, const uint8_t *data, uint64_t len,
                   struct vimg_error *err)
{
    struct qcow_state *s = node->state;
    uint64_t cs = s->cluster_size, at = qcow_round_up(s->file_end, cs);
    uint8_t *buf;
    int ret = 0;

    if (!(buf = calloc(1, cs)))
        return vimg_error_set(err, ENOMEM, "Out of memory");
    if (entry & QCOW_OFLAG_COMPRESSED)
        ret = qcow_read_compressed(node, entry, buf, err);
    else if (len < cs && node->backing)
        ret = vimg_node_pread_padded(node->backing, cluster * cs, buf, cs, err);
    memcpy(buf + in_cluster, data, len);
    if (ret == 0 && s->cipher)
        ret = vimg_sector_encrypt(s->cipher, cluster * cs / QCOW_SECTOR_SIZE, buf, cs, err);
    if (ret == 0)
        ret = qcow_pwrite_file(node, at, buf, cs, err);
    free(buf);
    if (ret < 0)
        return ret;
    s->file_end = at + cs;
    if ((ret = vimg_node_flush(node->file, err)) < 0)
        return ret;
    return qcow_write_entry(node, l2, cluster % s->l2_entries, at, err);
}

/* Writes [offset, +len) inside one cluster; data is encrypted in place on AES images. */
static int
qcow_write_cluster(struct vimg_node *node, uint64_t offset, uint8_t *data, uint64_t len,
                   struct vimg_error *err)
{
    struct qcow_state *s = node->state;
    uint64_t cluster = offset / s->cluster_size, in_cluster = offset % s->cluster_size;
    uint64_t l2, entry;
    int ret;

    if ((ret = qcow_lookup(node, cluster, &l2, &entry, err)) < 0)
        return ret;
    if (l2 == 0 && (ret = qcow_alloc_l2(node, cluster / s->l2_entries, &l2, err)) < 0)
        return ret;
    if (entry && !(entry & QCOW_OFLAG_COMPRESSED)) {
        if (s->cipher &&
            (ret = vimg_sector_encrypt(s->cipher, offset / QCOW_SECTOR_SIZE, data, len, err)) < 0)
            return ret;
        return qcow_pwrite_file(node, entry + in_cluster, data, len, err);
    }
    return qcow_alloc_cluster(node, cluster, l2, entry, in_cluster, data, len, err);
}

static int
qcow_pwritev(struct vimg_node *node, uint64_t offset, uint64_t bytes, const struct iovec *iov,
             int n_iov, unsigned flags, struct vimg_error *err)
{
    struct qcow_state *s = node->state;
    uint64_t copied = 0;
    uint8_t *buf;
    int ret = 0;

    (void)flags;
    if (node->is_encrypted && !s->cipher)
        return vimg_error_set(err, EACCES, "Parameter 'encrypt.key-secret' is required for "
                              "cipher");
    if (!(buf = malloc(bytes ? bytes : 1)))
        return vimg_error_set(err, ENOMEM, "Out of memory");
    for (int i = 0; i < n_iov && copied < bytes; i++) {
        uint64_t k = iov[i].iov_len < bytes - copied ? iov[i].iov_len : bytes - copied;
        memcpy(buf + copied, iov[i].iov_base, k);
        copied += k;
    }
    pthread_mutex_lock(&s->lock);
    for (uint64_t done = 0; done < bytes && ret == 0;) {
        uint64_t pos = offset + done, len = s->cluster_size - pos % s->cluster_size;

        if (len > bytes - done)
            len = bytes - done;
        ret = qcow_write_cluster(node, pos, buf + done, len, err);
        done += len;
    }
    pthread_mutex_unlock(&s->lock);
    free(buf);
    return ret;
}

/*
 * Deflates one cluster into out (cluster_size bytes) as qemu-img does; 0 when
 * the result would not be smaller than the cluster.
 */
static int
qcow_deflate(const uint8_t *in, uint64_t cs, uint8_t *out, uint64_t *out_len,
             struct vimg_error *err)
{
    z_stream z;
    int zret;

    memset(&z, 0, sizeof(z));
    if (deflateInit2(&z, Z_DEFAULT_COMPRESSION, Z_DEFLATED, -12, 9, Z_DEFAULT_STRATEGY) != Z_OK)
        return vimg_error_set(err, ENOMEM, "Could not initialise zlib");
    z.next_in = (uint8_t *)in;
    z.avail_in = (uInt)cs;
    z.next_out = out;
    z.avail_out = (uInt)cs;
    zret = deflate(&z, Z_FINISH);
    *out_len = zret == Z_STREAM_END ? cs - z.avail_out : 0;
    deflateEnd(&z);
    if (*out_len >= cs)
        *out_len = 0;
    return 0;
}

/* Puts len compressed bytes at the end of the file and points the cluster's entry at them. */
static int
qcow_put_compressed(struct vimg_node *node, uint64_t cluster, const uint8_t *data, uint64_t len,
                    struct vimg_error *err)
{
    struct qcow_state *s = node->state;
    uint64_t l2, entry, at;
    int ret;

    if ((ret = qcow_lookup(node, cluster, &l2, &entry, err)) < 0)
        return ret;
    if (l2 == 0 && (ret = qcow_alloc_l2(node, cluster / s->l2_entries, &l2, err)) < 0)
        return ret;
    /* At the file's length in whole sectors, where qemu-img puts it. */
    at = qcow_round_up(s->file_end, QCOW_SECTOR_SIZE);
    if ((ret = qcow_pwrite_file(node, at, data, len, err)) < 0)
        return ret;
    s->file_end = at + len;
    if ((ret = vimg_node_flush(node->file, err)) < 0)
        return ret;
    entry = at | QCOW_OFLAG_COMPRESSED | len << (63 - s->h.cluster_bits);
    return qcow_write_entry(node, l2, cluster % s->l2_entries, entry, err);
}

/*
 * One whole cluster (or the image's last, partial one, padded with zeros).
 * A cluster already stored plain is overwritten in place, uncompressed.
 */
static int
qcow_pwrite_compressed(struct vimg_node *node, uint64_t offset, const void *buf, uint64_t bytes,
                       struct vimg_error *err)
{
    struct qcow_state *s = node->state;
    uint64_t cs = s->cluster_size, out_len = 0, l2, entry;
    struct iovec iov;
    uint8_t *in, *out;
    int ret;

    if (offset % cs || bytes > cs || (bytes < cs && offset + bytes < (uint64_t)
                                      qcow_length(node, err)))
        return vimg_error_set(err, EINVAL, "Compressed writes must cover one whole cluster");
    in = calloc(1, cs);
    out = malloc(cs);
    if (!in || !out) {
        ret = vimg_error_set(err, ENOMEM, "Out of memory");
        goto out;
    }
    memcpy(in, buf, bytes);
    if ((ret = qcow_deflate(in, cs, out, &out_len, err)) < 0)
        goto out;
    pthread_mutex_lock(&s->lock);
    ret = qcow_lookup(node, offset / cs, &l2, &entry, err);
    pthread_mutex_unlock(&s->lock);
    if (ret < 0)
        goto out;
    if (out_len == 0 || (entry && !(entry & QCOW_OFLAG_COMPRESSED))) {
        iov.iov_base = in;
        iov.iov_len = bytes;
        ret = qcow_pwritev(node, offset, bytes, &iov, 1, 0, err);
        goto out;
    }
    pthread_mutex_lock(&s->lock);
    ret = qcow_put_compressed(node, offset / cs, out, out_len, err);
    pthread_mutex_unlock(&s->lock);
out:
    free(in);
    free(out);
    return ret;
}

static int
qcow_flush(struct vimg_node *node, struct vimg_error *err)
{
    return vimg_node_flush(node->file, err);
}

/* Entries are of one kind when both are 0, both compressed, or plain and contiguous. */
static bool
qcow_is_same_run(uint64_t first, uint64_t next, uint64_t expect)
{
    if (first == 0 || (first & QCOW_OFLAG_COMPRESSED))
        return first == 0 ? next == 0 : (next & QCOW_OFLAG_COMPRESSED) != 0;
    return next == expect;
}

static int
qcow_block_status(struct vimg_node *node, uint64_t offset, uint64_t bytes,
                  struct vimg_block_status *bs, struct vimg_error *err)
{
    struct qcow_state *s = node->state;
    uint64_t cs = s->cluster_size, run = cs - offset % cs, l2, entry = 0, next, expect;
    int ret;

    pthread_mutex_lock(&s->lock);
    ret = qcow_lookup(node, offset / cs, &l2, &entry, err);
    expect = entry + cs;
    while (ret == 0 && run < bytes) {
        if ((ret = qcow_lookup(node, (offset + run) / cs, &l2, &next, err)) < 0)
            break;
        if (!qcow_is_same_run(entry, next, expect))
            break;
        run += cs;
        expect += cs;
    }
    pthread_mutex_unlock(&s->lock);
    if (ret < 0)
        return ret;
    bs->bytes = run < bytes ? run : bytes;
    bs->flags = 0;
    if (entry & QCOW_OFLAG_COMPRESSED) {
        bs->flags = VIMG_BS_DATA | VIMG_BS_ALLOCATED | VIMG_BS_COMPRESSED;
    } else if (entry) {
        bs->flags = VIMG_BS_DATA | VIMG_BS_ALLOCATED;
        if (!node->is_encrypted) {
            bs->flags |= VIMG_BS_OFFSET_VALID;
            bs->offset = entry + offset % cs;
            bs->file = node->file;
        }
    }
    return 0;
}

/* Creation */

static const struct vimg_opt_desc qcow_create_opts[] = {
    { "size", VIMG_OPT_SIZE, "Virtual disk size", NULL },
    { "backing_file", VIMG_OPT_STRING, "File name of a base image", NULL },
    { "backing_fmt", VIMG_OPT_STRING, "Format of the backing image", NULL },
    { "encryption", VIMG_OPT_BOOL,
      "Encrypt the image with format 'aes'. (Deprecated in favor of encrypt.format=aes)",
      NULL },
    { "encrypt.format", VIMG_OPT_STRING, "Encrypt the image, format choices: 'aes'", NULL },
    { "encrypt.key-secret", VIMG_OPT_STRING,
      "ID of the secret that provides the AES encryption key", NULL },
    { NULL, 0, NULL, NULL },
};

struct qcow_create_params {
    uint64_t size;
    bool has_size;
    const char *backing_file;
    const char *backing_fmt;
    bool is_encrypted;
};

/*
 * Encryption options, checked as qemu-img does once the file exists; the
 * key is derived (and thrown away) so that a missing secret fails here.
 */
static int
qcow_check_encryption(struct vimg_opts *opts, struct qcow_create_params *p,
                      struct vimg_error *err)
{
    struct vimg_sector_cipher *cipher = NULL;
    const char *format = vimg_opts_get(opts, "encrypt.format");
    const char *secret = vimg_opts_get(opts, "encrypt.key-secret");
    bool has_encryption = vimg_opts_has(opts, "encryption"), is_encrypted = false;
    int ret;

    if ((ret = vimg_opts_get_bool(opts, "encryption", false, &is_encrypted, err)) < 0)
        return ret;
    if (format && has_encryption)
        return vimg_error_set(err, EINVAL, "'encrypt.format' and its alias 'encryption' "
                              "can't be used at the same time");
    if (format && strcmp(format, "aes") != 0)
        return vimg_error_set(err, EINVAL, "Unsupported encryption format");
    if (!format && !is_encrypted)
        return 0;
    if (!secret)
        return vimg_error_set(err, EINVAL, "Parameter 'encrypt.key-secret' is required for "
                              "cipher");
    if ((ret = qcow_new_cipher(secret, &cipher, err)) < 0)
        return ret;
    vimg_sector_cipher_free(cipher);
    p->is_encrypted = true;
    return 0;
}

static int
qcow_parse_create(struct vimg_opts *opts, struct qcow_create_params *p,
                  struct vimg_error *err)
{
    int ret;

    memset(p, 0, sizeof(*p));
    p->backing_file = vimg_opts_get(opts, "backing_file");
    p->backing_fmt = vimg_opts_get(opts, "backing_fmt");
    p->has_size = vimg_opts_has(opts, "size");
    if ((ret = vimg_opts_get_size(opts, "size", 0, &p->size, err)) < 0)
        return ret;
    /* `create` checked the backing file and took the size from it, unless -u. */
    if (!p->has_size)
        return vimg_error_set(err, EINVAL, "Image creation needs a size parameter");
    if (p->size % QCOW_SECTOR_SIZE &&
        __builtin_add_overflow(p->size, QCOW_SECTOR_SIZE - p->size % QCOW_SECTOR_SIZE, &p->size))
        p->size = UINT64_MAX;
    return 0;
}

/* Header, backing file name, then an empty L1 table padded to whole sectors. */
static int
qcow_write_new(struct vimg_node *file, const struct qcow_create_params *p,
               struct vimg_error *err)
{
    size_t name_len = p->backing_file ? strlen(p->backing_file) : 0;
    struct qcow_header h = {
        .magic = QCOW_MAGIC,
        .version = QCOW_VERSION,
        .size = p->size,
        .cluster_bits = p->backing_file ? 9 : 12,
        .l2_bits = p->backing_file ? 12 : 9,
        .crypt_method = p->is_encrypted ? QCOW_CRYPT_AES : QCOW_CRYPT_NONE,
    };
    uint64_t shift, l1_entries, len;
    uint8_t *buf;
    int ret;

    if (name_len > QCOW_MAX_BACKING_NAME)
        return vimg_error_set(err, EINVAL, "Backing file name too long");
    shift = (uint64_t)h.cluster_bits + h.l2_bits;
    l1_entries = p->size / (UINT64_C(1) << shift) + (p->size % (UINT64_C(1) << shift) != 0);
    if (l1_entries > QCOW_MAX_L1_ENTRIES)
        return vimg_error_set(err, EINVAL, "Image too large");
    if (name_len) {
        h.backing_file_offset = QCOW_HEADER_BYTES;
        h.backing_file_size = (uint32_t)name_len;
    }
    h.l1_table_offset = qcow_round_up(QCOW_HEADER_BYTES + name_len, 8);
    len = h.l1_table_offset + qcow_round_up(l1_entries * 8, QCOW_SECTOR_SIZE);
    if (!(buf = calloc(1, len)))
        return vimg_error_set(err, ENOMEM, "Out of memory");
    qcow_encode_header(&h, buf);
    if (name_len)
        memcpy(buf + QCOW_HEADER_BYTES, p->backing_file, name_len);
    ret = vimg_node_truncate(file, len, false, NULL, err);
    if (ret == 0)
        ret = vimg_node_pwrite(file, 0, buf, len, 0, err);
    free(buf);
    return ret;
}

static int
qcow_create(const char *filename, struct vimg_opts *opts, struct vimg_error *err)
{
    struct qcow_create_params p;
    struct vimg_node *file;
    int ret;

    if ((ret = qcow_parse_create(opts, &p, err)) < 0 ||
        (ret = vimg_create_file_empty(filename, opts, err)) < 0 ||
        (ret = qcow_check_encryption(opts, &p, err)) < 0)
        return ret;
    ret = vimg_open(&file, filename, NULL, NULL, VIMG_OPEN_RDWR | VIMG_OPEN_PROTOCOL, err);
    if (ret < 0)
        return ret;
    ret = qcow_write_new(file, &p, err);
    if (ret == 0)
        ret = vimg_node_flush(file, err);
    vimg_close(file);
    return ret;
}

/*
 * As qemu-img's commit leaves a qcow image: the L1 table zeroed (synced) and
 * the file cut right after it, so every cluster reads from the backing file.
 */
static int
qcow_make_empty(struct vimg_node *node, struct vimg_error *err)
{
    struct qcow_state *s = node->state;
    uint64_t l1_bytes = s->l1_entries * 8, end = s->h.l1_table_offset + l1_bytes;
    uint8_t *zeros = calloc(1, l1_bytes ? l1_bytes : 1);
    int ret;

    if (!zeros)
        return vimg_error_set(err, ENOMEM, "Out of memory");
    pthread_mutex_lock(&s->lock);
    ret = qcow_pwrite_file(node, s->h.l1_table_offset, zeros, l1_bytes, err);
    if (ret == 0)
        ret = vimg_node_flush(node->file, err);
    if (ret == 0)
        ret = vimg_node_truncate(node->file, end, true, NULL, err);
    if (ret == 0) {
        vimg_table_cache_drop(&s->tables, 0, UINT64_MAX);
        s->file_end = end;
    }
    pthread_mutex_unlock(&s->lock);
    free(zeros);
    return ret;
}

const struct vimg_driver vimg_qcow_driver = {
    .name = "qcow",
    .kind = VIMG_DRIVER_FORMAT,
    .state_size = sizeof(struct qcow_state),
    .has_zero_init = true,
    .supports_backing = true,
    .probe = qcow_probe,
    .open = qcow_open,
    .close = qcow_close,
    .create_opts = qcow_create_opts,
    .create = qcow_create,
    .pread = qcow_read,
    .pwritev = qcow_pwritev,
    .pwrite_compressed = qcow_pwrite_compressed,
    .flush = qcow_flush,
    .block_status = qcow_block_status,
    .length = qcow_length,
    .make_empty = qcow_make_empty,
};
