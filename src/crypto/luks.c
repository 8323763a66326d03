/*
 * LUKS1 (LUKS On-Disk Format Specification 1.2.3): the phdr and its eight
 * key slots, the anti-forensic splitter with hash diffusion, PBKDF2 key
 * derivation and the master key digest. Header checks and their texts
 * follow qemu-img 7.2 as observed; layouts written here are QEMU's: key
 * slots 4 KiB aligned after a 4 KiB header, the payload right after the
 * last slot.
 *
 * Key slots are added and erased by amend, with qemu-img 7.2's checks and
 * texts. Not supported: LUKS2, detached headers.
 * Iteration counts above LUKS_MAX_ITERS are refused so that a hostile
 * header cannot keep us busy for hours.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>

#include <vimg/object.h>

#include "crypto/luks.h"

#define LUKS_MAGIC "LUKS\xba\xbe"
#define LUKS_MAGIC_LEN 6
#define LUKS_NAME_LEN 32
#define LUKS_DIGEST_LEN 20
#define LUKS_SALT_LEN 32
#define LUKS_UUID_LEN 40
#define LUKS_SECTOR 512u
/* The header occupies the first 4 KiB: payload and key slots start at or after it. */
#define LUKS_HEADER_SECTORS 8u
#define LUKS_SLOT_ALIGN_SECTORS 8u
#define LUKS_SLOT_ACTIVE 0x00ac71f3u
#define LUKS_SLOT_DISABLED 0x0000deadu
#define LUKS_MIN_ITERS 1000u
#define LUKS_MAX_ITERS (1u << 28)
/* The master key digest takes an eighth of iter-time, as in cryptsetup and QEMU. */
#define LUKS_MK_ITER_DIVISOR 8u

/* phdr field offsets (all integers big-endian). */
#define OFF_MAGIC 0
#define OFF_VERSION 6
#define OFF_CIPHER_NAME 8
#define OFF_CIPHER_MODE 40
#define OFF_HASH_SPEC 72
#define OFF_PAYLOAD_OFFSET 104
#define OFF_KEY_BYTES 108
#define OFF_MK_DIGEST 112
#define OFF_MK_DIGEST_SALT 132
#define OFF_MK_DIGEST_ITER 164
#define OFF_UUID 168
#define OFF_KEYSLOTS 208
#define KEYSLOT_SIZE 48
/* key slot field offsets */
#define OFF_SLOT_ACTIVE 0
#define OFF_SLOT_ITERATIONS 4
#define OFF_SLOT_SALT 8
#define OFF_SLOT_KEY_MATERIAL 40
#define OFF_SLOT_STRIPES 44

struct luks_slot {
    uint32_t active;
    uint32_t iterations;
    uint8_t salt[LUKS_SALT_LEN];
    uint32_t key_material_offset;       /* sectors */
    uint32_t stripes;
};

struct luks_header {
    uint8_t magic[LUKS_MAGIC_LEN];
    uint16_t version;
    char cipher_name[LUKS_NAME_LEN];
    char cipher_mode[LUKS_NAME_LEN];
    char hash_spec[LUKS_NAME_LEN];
    uint32_t payload_offset;            /* sectors */
    uint32_t key_bytes;
    uint8_t mk_digest[LUKS_DIGEST_LEN];
    uint8_t mk_digest_salt[LUKS_SALT_LEN];
    uint32_t mk_digest_iter;
    char uuid[LUKS_UUID_LEN];
    struct luks_slot slots[VIMG_LUKS_N_SLOTS];
};

struct vimg_luks {
    struct luks_header hdr;
    enum vimg_cipher_alg cipher_alg;
    enum vimg_cipher_mode cipher_mode;
    enum vimg_ivgen_alg ivgen_alg;
    enum vimg_hash_alg ivgen_hash_alg;
    bool has_ivgen_hash_alg;
    enum vimg_hash_alg hash_alg;
    struct vimg_sector_cipher *cipher;  /* NULL until unlocked */
    uint8_t mk[2 * VIMG_HASH_MAX_DIGEST];   /* the master key once unlocked (amend adds slots) */
};

static uint16_t
luks_get_be16(const uint8_t *p)
{
    return (uint16_t)((p[0] << 8) | p[1]);
}

static uint32_t
luks_get_be32(const uint8_t *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

static void
luks_put_be16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)(v >> 8);
    p[1] = (uint8_t)v;
}

static void
luks_put_be32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

static void
luks_decode_header(const uint8_t *buf, struct luks_header *h)
{
    memcpy(h->magic, buf + OFF_MAGIC, LUKS_MAGIC_LEN);
    h->version = luks_get_be16(buf + OFF_VERSION);
    memcpy(h->cipher_name, buf + OFF_CIPHER_NAME, LUKS_NAME_LEN);
    memcpy(h->cipher_mode, buf + OFF_CIPHER_MODE, LUKS_NAME_LEN);
    memcpy(h->hash_spec, buf + OFF_HASH_SPEC, LUKS_NAME_LEN);
    h->payload_offset = luks_get_be32(buf + OFF_PAYLOAD_OFFSET);
    h->key_bytes = luks_get_be32(buf + OFF_KEY_BYTES);
    memcpy(h->mk_digest, buf + OFF_MK_DIGEST, LUKS_DIGEST_LEN);
    memcpy(h->mk_digest_salt, buf + OFF_MK_DIGEST_SALT, LUKS_SALT_LEN);
    h->mk_digest_iter = luks_get_be32(buf + OFF_MK_DIGEST_ITER);
    memcpy(h->uuid, buf + OFF_UUID, LUKS_UUID_LEN);
    for (unsigned i = 0; i < VIMG_LUKS_N_SLOTS; i++) {
        const uint8_t *p = buf + OFF_KEYSLOTS + i * KEYSLOT_SIZE;
        struct luks_slot *s = &h->slots[i];
        s->active = luks_get_be32(p + OFF_SLOT_ACTIVE);
        s->iterations = luks_get_be32(p + OFF_SLOT_ITERATIONS);
        memcpy(s->salt, p + OFF_SLOT_SALT, LUKS_SALT_LEN);
        s->key_material_offset = luks_get_be32(p + OFF_SLOT_KEY_MATERIAL);
        s->stripes = luks_get_be32(p + OFF_SLOT_STRIPES);
    }
}

static void
luks_encode_header(const struct luks_header *h, uint8_t *buf)
{
    memset(buf, 0, VIMG_LUKS_HEADER_SIZE);
    memcpy(buf + OFF_MAGIC, h->magic, LUKS_MAGIC_LEN);
    luks_put_be16(buf + OFF_VERSION, h->version);
    memcpy(buf + OFF_CIPHER_NAME, h->cipher_name, LUKS_NAME_LEN);
    memcpy(buf + OFF_CIPHER_MODE, h->cipher_mode, LUKS_NAME_LEN);
    memcpy(buf + OFF_HASH_SPEC, h->hash_spec, LUKS_NAME_LEN);
    luks_put_be32(buf + OFF_PAYLOAD_OFFSET, h->payload_offset);
    luks_put_be32(buf + OFF_KEY_BYTES, h->key_bytes);
    memcpy(buf + OFF_MK_DIGEST, h->mk_digest, LUKS_DIGEST_LEN);
    memcpy(buf + OFF_MK_DIGEST_SALT, h->mk_digest_salt, LUKS_SALT_LEN);
    luks_put_be32(buf + OFF_MK_DIGEST_ITER, h->mk_digest_iter);
    memcpy(buf + OFF_UUID, h->uuid, LUKS_UUID_LEN);
    for (unsigned i = 0; i < VIMG_LUKS_N_SLOTS; i++) {
        uint8_t *p = buf + OFF_KEYSLOTS + i * KEYSLOT_SIZE;
        const struct luks_slot *s = &h->slots[i];
        luks_put_be32(p + OFF_SLOT_ACTIVE, s->active);
        luks_put_be32(p + OFF_SLOT_ITERATIONS, s->iterations);
        memcpy(p + OFF_SLOT_SALT, s->salt, LUKS_SALT_LEN);
        luks_put_be32(p + OFF_SLOT_KEY_MATERIAL, s->key_material_offset);
        luks_put_be32(p + OFF_SLOT_STRIPES, s->stripes);
    }
}

bool
vimg_luks_probe(const uint8_t *buf, size_t len)
{
    return len >= OFF_VERSION + 2 && memcmp(buf + OFF_MAGIC, LUKS_MAGIC, LUKS_MAGIC_LEN) == 0 &&
           luks_get_be16(buf + OFF_VERSION) == 1;
}

/* Sectors of key material a slot holds: key_bytes * stripes, rounded up. */
static uint64_t
luks_slot_sectors(const struct luks_header *h, const struct luks_slot *s)
{
    return ((uint64_t)h->key_bytes * s->stripes + LUKS_SECTOR - 1) / LUKS_SECTOR;
}

static int
luks_check_names(const struct luks_header *h, struct vimg_error *err)
{
    if (!memchr(h->cipher_name, '\0', LUKS_NAME_LEN))
        return vimg_error_set(err, EBADMSG, "LUKS header cipher name is not NUL terminated");
    if (!memchr(h->cipher_mode, '\0', LUKS_NAME_LEN))
        return vimg_error_set(err, EBADMSG, "LUKS header cipher mode is not NUL terminated");
    if (!memchr(h->hash_spec, '\0', LUKS_NAME_LEN))
        return vimg_error_set(err, EBADMSG, "LUKS header hash spec is not NUL terminated");
    return 0;
}

static int
luks_check_slot(const struct luks_header *h, size_t i, struct vimg_error *err)
{
    const struct luks_slot *s = &h->slots[i];
    bool is_active = s->active == LUKS_SLOT_ACTIVE;

    if (s->stripes != VIMG_LUKS_STRIPES)
        return vimg_error_set(err, EBADMSG, "Keyslot %zu is corrupted (stripes %" PRIu32
                              " != %u)", i, s->stripes, VIMG_LUKS_STRIPES);
    if (!is_active && s->active != LUKS_SLOT_DISABLED)
        return vimg_error_set(err, EBADMSG, "Keyslot %zu state (active/disable) is corrupted",
                              i);
    if (is_active && s->iterations == 0)
        return vimg_error_set(err, EBADMSG, "Keyslot %zu iteration count is zero", i);
    if (is_active && s->iterations > LUKS_MAX_ITERS)
        return vimg_error_set(err, EBADMSG, "Keyslot %zu iteration count %" PRIu32
                              " is larger than %u", i, s->iterations, LUKS_MAX_ITERS);
    if (s->key_material_offset < LUKS_HEADER_SECTORS)
        return vimg_error_set(err, EBADMSG, "Keyslot %zu is overlapping with the LUKS header",
                              i);
    if ((uint64_t)s->key_material_offset + luks_slot_sectors(h, s) > h->payload_offset)
        return vimg_error_set(err, EBADMSG, "Keyslot %zu is overlapping with the encrypted "
                              "payload", i);
    return 0;
}

static int
luks_check_slots(const struct luks_header *h, struct vimg_error *err)
{
    int ret;

    for (size_t i = 0; i < VIMG_LUKS_N_SLOTS; i++)
        if ((ret = luks_check_slot(h, i, err)) < 0)
            return ret;
    for (size_t i = 0; i < VIMG_LUKS_N_SLOTS; i++) {
        uint64_t start1 = h->slots[i].key_material_offset;
        uint64_t end1 = start1 + luks_slot_sectors(h, &h->slots[i]);
        for (size_t j = i + 1; j < VIMG_LUKS_N_SLOTS; j++) {
            uint64_t start2 = h->slots[j].key_material_offset;
            uint64_t end2 = start2 + luks_slot_sectors(h, &h->slots[j]);
            if (start1 < end2 && start2 < end1)
                return vimg_error_set(err, EBADMSG, "Keyslots %zu and %zu are overlapping in "
                                      "the header", i, j);
        }
    }
    return 0;
}

static int
luks_check_header(const struct luks_header *h, struct vimg_error *err)
{
    int ret;

    if (memcmp(h->magic, LUKS_MAGIC, LUKS_MAGIC_LEN) != 0)
        return vimg_error_set(err, EINVAL, "Volume is not in LUKS format");
    if (h->version != 1)
        return vimg_error_set(err, ENOTSUP, "LUKS version %" PRIu16 " is not supported",
                              h->version);
    if ((ret = luks_check_names(h, err)) < 0)
        return ret;
    if (h->payload_offset < LUKS_HEADER_SECTORS)
        return vimg_error_set(err, EBADMSG, "LUKS payload is overlapping with the header");
    if (h->mk_digest_iter == 0)
        return vimg_error_set(err, EBADMSG, "LUKS key iteration count is zero");
    if (h->mk_digest_iter > LUKS_MAX_ITERS)
        return vimg_error_set(err, EBADMSG, "LUKS key iteration count %" PRIu32 " is larger "
                              "than %u", h->mk_digest_iter, LUKS_MAX_ITERS);
    return luks_check_slots(h, err);
}

/* The LUKS cipher names QEMU knows, by family and key length. */
static int
luks_cipher_lookup(const char *name, uint32_t key_bytes, enum vimg_cipher_alg *out)
{
    static const enum vimg_cipher_alg algs[] = {
        VIMG_CIPHER_AES_128, VIMG_CIPHER_AES_192, VIMG_CIPHER_AES_256,
        VIMG_CIPHER_CAST5_128,
        VIMG_CIPHER_SERPENT_128, VIMG_CIPHER_SERPENT_192, VIMG_CIPHER_SERPENT_256,
        VIMG_CIPHER_TWOFISH_128, VIMG_CIPHER_TWOFISH_192, VIMG_CIPHER_TWOFISH_256,
    };

    for (size_t i = 0; i < sizeof(algs) / sizeof(algs[0]); i++) {
        const char *full = vimg_cipher_alg_name(algs[i]);
        size_t n = strlen(name);
        if (strncmp(full, name, n) == 0 && (full[n] == '-' || full[n] == '\0') &&
            vimg_cipher_key_len(algs[i]) == key_bytes) {
            *out = algs[i];
            return 0;
        }
    }
    return -1;
}

static int
luks_parse_hash(const char *name, enum vimg_hash_alg *out, struct vimg_error *err)
{
    int v = vimg_hash_alg_parse(name);

    if (v < 0)
        return vimg_error_set(err, ENOTSUP, "Hash algorithm '%s' not supported", name);
    *out = (enum vimg_hash_alg)v;
    return 0;
}

/* "xts-plain64", "cbc-essiv:sha256": mode, IV generator and its hash. */
static int
luks_parse_mode(struct vimg_luks *l, char *ivgen_name, size_t ivgen_size,
                struct vimg_error *err)
{
    const char *spec = l->hdr.cipher_mode;
    const char *dash = strchr(spec, '-');
    char mode[LUKS_NAME_LEN];
    char *colon;
    int v;

    if (!dash)
        return vimg_error_set(err, EBADMSG, "Unexpected cipher mode string format '%s'", spec);
    snprintf(mode, sizeof(mode), "%.*s", (int)(dash - spec), spec);
    if ((v = vimg_cipher_mode_parse(mode)) < 0)
        return vimg_error_set(err, ENOTSUP, "Cipher mode '%s' not supported", mode);
    l->cipher_mode = (enum vimg_cipher_mode)v;
    snprintf(ivgen_name, ivgen_size, "%s", dash + 1);
    if ((colon = strchr(ivgen_name, ':'))) {
        *colon = '\0';
        l->has_ivgen_hash_alg = true;
        return luks_parse_hash(colon + 1, &l->ivgen_hash_alg, err);
    }
    return 0;
}

/* Checks in the order qemu-img reports them: mode, IV hash, cipher, IV generator, hash. */
static int
luks_parse_cipher(struct vimg_luks *l, struct vimg_error *err)
{
    const struct luks_header *h = &l->hdr;
    char ivgen[LUKS_NAME_LEN];
    uint32_t key_bytes = h->key_bytes;
    int ret, v;

    if ((ret = luks_parse_mode(l, ivgen, sizeof(ivgen), err)) < 0)
        return ret;
    if (l->cipher_mode == VIMG_CIPHER_MODE_XTS)
        key_bytes /= 2;
    if ((l->cipher_mode == VIMG_CIPHER_MODE_XTS && h->key_bytes % 2) ||
        luks_cipher_lookup(h->cipher_name, key_bytes, &l->cipher_alg) < 0)
        return vimg_error_set(err, ENOTSUP, "Algorithm '%s' with key size %" PRIu32
                              " bytes not supported", h->cipher_name, key_bytes);
    if ((v = vimg_ivgen_alg_parse(ivgen)) < 0)
        return vimg_error_set(err, ENOTSUP, "IV generator '%s' not supported", ivgen);
    l->ivgen_alg = (enum vimg_ivgen_alg)v;
    if (l->ivgen_alg == VIMG_IVGEN_ESSIV && !l->has_ivgen_hash_alg)
        return vimg_error_set(err, EBADMSG, "Missing IV generator hash specification");
    if ((ret = luks_parse_hash(h->hash_spec, &l->hash_alg, err)) < 0)
        return ret;
    return vimg_ivgen_check(l->cipher_alg, l->ivgen_alg, l->ivgen_hash_alg, err);
}

/* hash diffusion of the AF splitter: each digest-sized block becomes H(index || block). */
static int
luks_af_diffuse(struct vimg_hash_ctx *hctx, size_t digest_len, uint8_t *buf, size_t len,
                struct vimg_error *err)
{
    uint8_t out[VIMG_HASH_MAX_DIGEST], index[4];
    int ret;

    for (size_t off = 0, j = 0; off < len; off += digest_len, j++) {
        size_t n = len - off < digest_len ? len - off : digest_len;
        luks_put_be32(index, (uint32_t)j);
        if ((ret = vimg_hash_ctx_digest(hctx, index, sizeof(index), buf + off, n, out,
                                        err)) < 0)
            return ret;
        memcpy(buf + off, out, n);
    }
    return 0;
}

/* AF-merge: the key from stripes blocks of key_len bytes in src. */
static int
luks_af_merge(enum vimg_hash_alg hash, const uint8_t *src, size_t key_len, uint32_t stripes,
              uint8_t *key, struct vimg_error *err)
{
    struct vimg_hash_ctx *hctx = vimg_hash_ctx_new(hash, err);
    size_t digest_len = vimg_hash_digest_len(hash);
    int ret = 0;

    if (!hctx)
        return -err->errnum;
    memset(key, 0, key_len);
    for (uint32_t i = 0; i + 1 < stripes && ret == 0; i++) {
        for (size_t k = 0; k < key_len; k++)
            key[k] ^= src[(size_t)i * key_len + k];
        ret = luks_af_diffuse(hctx, digest_len, key, key_len, err);
    }
    for (size_t k = 0; k < key_len && ret == 0; k++)
        key[k] ^= src[(size_t)(stripes - 1) * key_len + k];
    vimg_hash_ctx_free(hctx);
    return ret;
}

/* AF-split: stripes blocks in dst, all random but the last, which merges back to key. */
static int
luks_af_split(enum vimg_hash_alg hash, const uint8_t *key, size_t key_len, uint32_t stripes,
              uint8_t *dst, struct vimg_error *err)
{
    size_t last = (size_t)(stripes - 1) * key_len;
    uint8_t *d = calloc(1, key_len);
    int ret;

    if (!d)
        return vimg_error_set(err, ENOMEM, "Out of memory");
    /* With the last block zero, merging gives the diffused chain; key ^ chain merges to key. */
    memset(dst + last, 0, key_len);
    if ((ret = vimg_random_bytes(dst, last, err)) == 0 &&
        (ret = luks_af_merge(hash, dst, key_len, stripes, d, err)) == 0) {
        for (size_t k = 0; k < key_len; k++)
            dst[last + k] = d[k] ^ key[k];
    }
    OPENSSL_cleanse(d, key_len);
    free(d);
    return ret;
}

static size_t
luks_material_len(const struct vimg_luks *l)
{
    size_t n = (size_t)l->hdr.key_bytes * VIMG_LUKS_STRIPES;

    return (n + LUKS_SECTOR - 1) / LUKS_SECTOR * LUKS_SECTOR;
}

/* Decrypts a slot's key material with pass and checks the master key digest. */
static int
luks_try_slot(struct vimg_luks *l, const struct luks_slot *s, const char *pass,
              size_t pass_len, uint8_t *material, uint8_t *mk, struct vimg_error *err)
{
    size_t key_len = l->hdr.key_bytes;
    uint8_t slot_key[2 * VIMG_HASH_MAX_DIGEST], digest[LUKS_DIGEST_LEN];
    struct vimg_sector_cipher *c = NULL;
    int ret;

    if ((ret = vimg_pbkdf2(l->hash_alg, pass, pass_len, s->salt, LUKS_SALT_LEN,
                           s->iterations, slot_key, key_len, err)) < 0 ||
        (ret = vimg_sector_cipher_new(&c, l->cipher_alg, l->cipher_mode, l->ivgen_alg,
                                      l->ivgen_hash_alg, slot_key, key_len, err)) < 0 ||
        (ret = vimg_sector_decrypt(c, 0, material, luks_material_len(l), err)) < 0 ||
        (ret = luks_af_merge(l->hash_alg, material, key_len, s->stripes, mk, err)) < 0 ||
        (ret = vimg_pbkdf2(l->hash_alg, mk, key_len, l->hdr.mk_digest_salt, LUKS_SALT_LEN,
                           l->hdr.mk_digest_iter, digest, sizeof(digest), err)) < 0)
        goto out;
    ret = CRYPTO_memcmp(digest, l->hdr.mk_digest, LUKS_DIGEST_LEN) == 0;
out:
    vimg_sector_cipher_free(c);
    OPENSSL_cleanse(slot_key, sizeof(slot_key));
    return ret;
}

/* The master key from the first slot pass opens; keys the payload cipher. */
static int
luks_unlock(struct vimg_luks *l, vimg_luks_read_fn read_fn, void *opaque, const char *pass,
            size_t pass_len, struct vimg_error *err)
{
    size_t len = luks_material_len(l);
    uint8_t *material = malloc(len), mk[2 * VIMG_HASH_MAX_DIGEST];
    int ret = 0;

    if (!material)
        return vimg_error_set(err, ENOMEM, "Out of memory");
    for (size_t i = 0; i < VIMG_LUKS_N_SLOTS; i++) {
        const struct luks_slot *s = &l->hdr.slots[i];
        if (s->active != LUKS_SLOT_ACTIVE)
            continue;
        if ((ret = read_fn(opaque, (uint64_t)s->key_material_offset * LUKS_SECTOR, material,
                           len, err)) < 0 ||
            (ret = luks_try_slot(l, s, pass, pass_len, material, mk, err)) != 0)
            break;
    }
    if (ret == 0)
        ret = vimg_error_set(err, EPERM, "Invalid password, cannot unlock any keyslot");
    else if (ret > 0)
        ret = vimg_sector_cipher_new(&l->cipher, l->cipher_alg, l->cipher_mode, l->ivgen_alg,
                                     l->ivgen_hash_alg, mk, l->hdr.key_bytes, err);
    if (ret == 0)
        memcpy(l->mk, mk, sizeof(l->mk));
    OPENSSL_cleanse(mk, sizeof(mk));
    OPENSSL_cleanse(material, len);
    free(material);
    return ret;
}

int
vimg_luks_open(struct vimg_luks **out, vimg_luks_read_fn read_fn, void *opaque,
               const char *pass, size_t pass_len, struct vimg_error *err)
{
    uint8_t buf[VIMG_LUKS_HEADER_SIZE];
    struct vimg_luks *l = calloc(1, sizeof(*l));
    int ret;

    if (!l)
        return vimg_error_set(err, ENOMEM, "Out of memory");
    if ((ret = read_fn(opaque, 0, buf, sizeof(buf), err)) < 0)
        goto fail;
    luks_decode_header(buf, &l->hdr);
    if ((ret = luks_check_header(&l->hdr, err)) < 0 || (ret = luks_parse_cipher(l, err)) < 0)
        goto fail;
    if (pass) {
        if ((ret = vimg_sector_cipher_check(l->cipher_alg, l->cipher_mode, l->ivgen_alg,
                                            l->ivgen_hash_alg, err)) < 0 ||
            (ret = luks_unlock(l, read_fn, opaque, pass, pass_len, err)) < 0)
            goto fail;
    }
    *out = l;
    return 0;
fail:
    vimg_luks_free(l);
    return ret;
}

void
vimg_luks_free(struct vimg_luks *luks)
{
    if (!luks)
        return;
    vimg_sector_cipher_free(luks->cipher);
    OPENSSL_cleanse(luks, sizeof(*luks));
    free(luks);
}

uint64_t
vimg_luks_payload_offset(const struct vimg_luks *luks)
{
    return (uint64_t)luks->hdr.payload_offset * LUKS_SECTOR;
}

struct vimg_sector_cipher *
vimg_luks_cipher(const struct vimg_luks *luks)
{
    return luks->cipher;
}

/* The UUID as text; bytes JSON cannot carry become '?'. */
static json_t *
luks_uuid_json(const struct luks_header *h)
{
    char uuid[LUKS_UUID_LEN + 1];
    size_t n = strnlen(h->uuid, LUKS_UUID_LEN);

    for (size_t i = 0; i < n; i++)
        uuid[i] = h->uuid[i] >= 0x20 && h->uuid[i] < 0x7f ? h->uuid[i] : '?';
    uuid[n] = '\0';
    return json_string(uuid);
}

static json_t *
luks_slot_json(const struct luks_slot *s)
{
    json_t *slot = json_object();
    bool is_active = s->active == LUKS_SLOT_ACTIVE;

    json_object_set_new(slot, "active", json_boolean(is_active));
    if (is_active)
        json_object_set_new(slot, "iters", json_integer(s->iterations));
    json_object_set_new(slot, "key-offset",
                        json_integer((json_int_t)s->key_material_offset * LUKS_SECTOR));
    if (is_active)
        json_object_set_new(slot, "stripes", json_integer(s->stripes));
    return slot;
}

json_t *
vimg_luks_info(const struct vimg_luks *luks)
{
    const struct luks_header *h = &luks->hdr;
    json_t *data = json_object(), *slots = json_array();

    if (!data || !slots) {
        json_decref(data);
        json_decref(slots);
        return NULL;
    }
    /* In the order QEMU prints them (its dictionary's hash order), which `info` keeps. */
    json_object_set_new(data, "ivgen-alg", json_string(vimg_ivgen_alg_name(luks->ivgen_alg)));
    json_object_set_new(data, "hash-alg", json_string(vimg_hash_alg_name(luks->hash_alg)));
    json_object_set_new(data, "cipher-alg", json_string(vimg_cipher_alg_name(luks->cipher_alg)));
    json_object_set_new(data, "uuid", luks_uuid_json(h));
    if (luks->ivgen_alg == VIMG_IVGEN_ESSIV)
        json_object_set_new(data, "ivgen-hash-alg",
                            json_string(vimg_hash_alg_name(luks->ivgen_hash_alg)));
    json_object_set_new(data, "cipher-mode",
                        json_string(vimg_cipher_mode_name(luks->cipher_mode)));
    for (size_t i = 0; i < VIMG_LUKS_N_SLOTS; i++)
        json_array_append_new(slots, luks_slot_json(&h->slots[i]));
    json_object_set_new(data, "slots", slots);
    json_object_set_new(data, "payload-offset",
                        json_integer((json_int_t)h->payload_offset * LUKS_SECTOR));
    json_object_set_new(data, "master-key-iters", json_integer(h->mk_digest_iter));
    return data;
}

static int
luks_get_choice(struct vimg_opts *opts, const char *prefix, const char *name,
                int (*parse)(const char *), int def, int *out, struct vimg_error *err)
{
    char path[64];
    const char *v;

    snprintf(path, sizeof(path), "%s%s", prefix, name);
    v = vimg_opts_get(opts, path);
    *out = v ? parse(v) : def;
    if (*out < 0)
        return vimg_error_set(err, EINVAL, "Parameter '%s' does not accept value '%s'", path,
                              v);
    return 0;
}

int
vimg_luks_parse_create_opts(struct vimg_opts *opts, const char *prefix,
                            struct vimg_luks_create_opts *out, struct vimg_error *err)
{
    int alg, mode, ivgen, ivhash, hash, ret;
    char path[64];

    memset(out, 0, sizeof(*out));
    snprintf(path, sizeof(path), "%sivgen-hash-alg", prefix);
    out->has_ivgen_hash_alg = vimg_opts_has(opts, path);
    if ((ret = luks_get_choice(opts, prefix, "cipher-alg", vimg_cipher_alg_parse,
                               VIMG_CIPHER_AES_256, &alg, err)) < 0 ||
        (ret = luks_get_choice(opts, prefix, "cipher-mode", vimg_cipher_mode_parse,
                               VIMG_CIPHER_MODE_XTS, &mode, err)) < 0 ||
        (ret = luks_get_choice(opts, prefix, "ivgen-alg", vimg_ivgen_alg_parse,
                               VIMG_IVGEN_PLAIN64, &ivgen, err)) < 0 ||
        (ret = luks_get_choice(opts, prefix, "ivgen-hash-alg", vimg_hash_alg_parse,
                               VIMG_HASH_SHA256, &ivhash, err)) < 0 ||
        (ret = luks_get_choice(opts, prefix, "hash-alg", vimg_hash_alg_parse,
                               VIMG_HASH_SHA256, &hash, err)) < 0)
        return ret;
    snprintf(path, sizeof(path), "%siter-time", prefix);
    if ((ret = vimg_opts_get_number(opts, path, 2000, &out->iter_time_ms, err)) < 0)
        return ret;
    out->cipher_alg = (enum vimg_cipher_alg)alg;
    out->cipher_mode = (enum vimg_cipher_mode)mode;
    out->ivgen_alg = (enum vimg_ivgen_alg)ivgen;
    out->ivgen_hash_alg = (enum vimg_hash_alg)ivhash;
    out->hash_alg = (enum vimg_hash_alg)hash;
    if (out->ivgen_alg == VIMG_IVGEN_ESSIV)
        out->has_ivgen_hash_alg = true;
    return 0;
}

int
vimg_luks_check_create_opts(const struct vimg_luks_create_opts *o, struct vimg_error *err)
{
    if (o->cipher_alg == VIMG_CIPHER_DES || o->cipher_alg == VIMG_CIPHER_3DES)
        return vimg_error_set(err, ENOTSUP, "Algorithm '%s' not supported",
                              vimg_cipher_alg_name(o->cipher_alg));
    return vimg_sector_cipher_check(o->cipher_alg, o->cipher_mode, o->ivgen_alg,
                                    o->ivgen_hash_alg, err);
}

static int
luks_make_uuid(char *uuid, struct vimg_error *err)
{
    uint8_t b[16];
    int ret;

    if ((ret = vimg_random_bytes(b, sizeof(b), err)) < 0)
        return ret;
    b[6] = (uint8_t)((b[6] & 0x0f) | 0x40);     /* version 4: random */
    b[8] = (uint8_t)((b[8] & 0x3f) | 0x80);     /* RFC 4122 variant */
    snprintf(uuid, LUKS_UUID_LEN, "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-"
             "%02x%02x%02x%02x%02x%02x", b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7],
             b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]);
    return 0;
}

/* Sectors QEMU gives each key slot: its key material rounded up to 4 KiB. */
static uint64_t
luks_layout_slot_sectors(uint32_t key_bytes)
{
    uint64_t n = ((uint64_t)key_bytes * VIMG_LUKS_STRIPES + LUKS_SECTOR - 1) / LUKS_SECTOR;

    return (n + LUKS_SLOT_ALIGN_SECTORS - 1) / LUKS_SLOT_ALIGN_SECTORS * LUKS_SLOT_ALIGN_SECTORS;
}

static uint32_t
luks_layout_key_bytes(enum vimg_cipher_alg alg, enum vimg_cipher_mode mode)
{
    return (uint32_t)(vimg_cipher_key_len(alg) * (mode == VIMG_CIPHER_MODE_XTS ? 2 : 1));
}

uint64_t
vimg_luks_header_len(const struct vimg_luks_create_opts *o)
{
    uint64_t slot = luks_layout_slot_sectors(luks_layout_key_bytes(o->cipher_alg,
                                                                   o->cipher_mode));

    return (LUKS_HEADER_SECTORS + VIMG_LUKS_N_SLOTS * slot) * LUKS_SECTOR;
}

/* Names, key size, QEMU's layout (slots 4 KiB aligned, payload after the last) and UUID. */
static int
luks_build_header(struct vimg_luks *l, struct vimg_error *err)
{
    struct luks_header *h = &l->hdr;
    const char *alg = vimg_cipher_alg_name(l->cipher_alg);
    uint64_t slot_sectors;

    memcpy(h->magic, LUKS_MAGIC, LUKS_MAGIC_LEN);
    h->version = 1;
    snprintf(h->cipher_name, LUKS_NAME_LEN, "%.*s", (int)strcspn(alg, "-"), alg);
    if (l->has_ivgen_hash_alg)
        snprintf(h->cipher_mode, LUKS_NAME_LEN, "%s-%s:%s",
                 vimg_cipher_mode_name(l->cipher_mode), vimg_ivgen_alg_name(l->ivgen_alg),
                 vimg_hash_alg_name(l->ivgen_hash_alg));
    else
        snprintf(h->cipher_mode, LUKS_NAME_LEN, "%s-%s",
                 vimg_cipher_mode_name(l->cipher_mode), vimg_ivgen_alg_name(l->ivgen_alg));
    snprintf(h->hash_spec, LUKS_NAME_LEN, "%s", vimg_hash_alg_name(l->hash_alg));
    h->key_bytes = luks_layout_key_bytes(l->cipher_alg, l->cipher_mode);
    slot_sectors = luks_layout_slot_sectors(h->key_bytes);
    for (unsigned i = 0; i < VIMG_LUKS_N_SLOTS; i++) {
        h->slots[i].active = LUKS_SLOT_DISABLED;
        h->slots[i].key_material_offset = (uint32_t)(LUKS_HEADER_SECTORS + i * slot_sectors);
        h->slots[i].stripes = VIMG_LUKS_STRIPES;
    }
    h->payload_offset = (uint32_t)(LUKS_HEADER_SECTORS + VIMG_LUKS_N_SLOTS * slot_sectors);
    return luks_make_uuid(h->uuid, err);
}

/* PBKDF2 iterations for iter_ms (divided by divisor), at least QEMU's minimum. */
static int
luks_iterations(enum vimg_hash_alg hash, size_t out_len, uint64_t iter_ms, unsigned divisor,
                uint32_t *out, struct vimg_error *err)
{
    uint64_t iters;
    int ret;

    if ((ret = vimg_pbkdf2_count_iters(hash, out_len, iter_ms, divisor, &iters, err)) < 0)
        return ret;
    if (iters < LUKS_MIN_ITERS)
        iters = LUKS_MIN_ITERS;
    if (iters > LUKS_MAX_ITERS)
        return vimg_error_set(err, ERANGE, "PBKDF iterations %" PRIu64 " larger than %u: %s",
                              iters, LUKS_MAX_ITERS, strerror(ERANGE));
    *out = (uint32_t)iters;
    return 0;
}

static int
luks_make_mk_digest(struct vimg_luks *l, const uint8_t *mk, uint64_t iter_ms,
                    struct vimg_error *err)
{
    struct luks_header *h = &l->hdr;
    int ret;

    if ((ret = vimg_random_bytes(h->mk_digest_salt, LUKS_SALT_LEN, err)) < 0 ||
        (ret = luks_iterations(l->hash_alg, LUKS_DIGEST_LEN, iter_ms, LUKS_MK_ITER_DIVISOR,
                               &h->mk_digest_iter, err)) < 0)
        return ret;
    return vimg_pbkdf2(l->hash_alg, mk, h->key_bytes, h->mk_digest_salt, LUKS_SALT_LEN,
                       h->mk_digest_iter, h->mk_digest, LUKS_DIGEST_LEN, err);
}

/* Splits mk, encrypts it with a key derived from pass and writes it to slot index. */
static int
luks_make_slot(struct vimg_luks *l, size_t index, const uint8_t *mk, const char *pass,
               size_t pass_len, uint64_t iter_ms, vimg_luks_write_fn write_fn, void *opaque,
               struct vimg_error *err)
{
    struct luks_slot *s = &l->hdr.slots[index];
    size_t key_len = l->hdr.key_bytes, len = luks_material_len(l);
    uint8_t slot_key[2 * VIMG_HASH_MAX_DIGEST];
    uint8_t *material = calloc(1, len);
    struct vimg_sector_cipher *c = NULL;
    int ret;

    if (!material)
        return vimg_error_set(err, ENOMEM, "Out of memory");
    if ((ret = luks_iterations(l->hash_alg, key_len, iter_ms, 1, &s->iterations, err)) < 0 ||
        (ret = vimg_random_bytes(s->salt, LUKS_SALT_LEN, err)) < 0 ||
        (ret = vimg_pbkdf2(l->hash_alg, pass, pass_len, s->salt, LUKS_SALT_LEN, s->iterations,
                           slot_key, key_len, err)) < 0 ||
        (ret = luks_af_split(l->hash_alg, mk, key_len, VIMG_LUKS_STRIPES, material, err)) < 0 ||
        (ret = vimg_sector_cipher_new(&c, l->cipher_alg, l->cipher_mode, l->ivgen_alg,
                                      l->ivgen_hash_alg, slot_key, key_len, err)) < 0 ||
        (ret = vimg_sector_encrypt(c, 0, material, len, err)) < 0 ||
        (ret = write_fn(opaque, (uint64_t)s->key_material_offset * LUKS_SECTOR, material, len,
                        err)) < 0)
        goto out;
    s->active = LUKS_SLOT_ACTIVE;
out:
    vimg_sector_cipher_free(c);
    OPENSSL_cleanse(slot_key, sizeof(slot_key));
    OPENSSL_cleanse(material, len);
    free(material);
    return ret;
}

int
vimg_luks_create(struct vimg_luks **out, const struct vimg_luks_create_opts *o,
                 const char *pass, size_t pass_len, vimg_luks_write_fn write_fn, void *opaque,
                 struct vimg_error *err)
{
    struct vimg_luks *l = calloc(1, sizeof(*l));
    uint8_t mk[2 * VIMG_HASH_MAX_DIGEST], buf[VIMG_LUKS_HEADER_SIZE];
    int ret;

    if (!l)
        return vimg_error_set(err, ENOMEM, "Out of memory");
    l->cipher_alg = o->cipher_alg;
    l->cipher_mode = o->cipher_mode;
    l->ivgen_alg = o->ivgen_alg;
    l->ivgen_hash_alg = o->ivgen_hash_alg;
    l->has_ivgen_hash_alg = o->has_ivgen_hash_alg;
    l->hash_alg = o->hash_alg;
    if ((ret = vimg_luks_check_create_opts(o, err)) < 0 ||
        (ret = luks_build_header(l, err)) < 0 ||
        (ret = vimg_random_bytes(mk, l->hdr.key_bytes, err)) < 0 ||
        (ret = luks_make_mk_digest(l, mk, o->iter_time_ms, err)) < 0 ||
        (ret = luks_make_slot(l, 0, mk, pass, pass_len, o->iter_time_ms, write_fn, opaque,
                              err)) < 0 ||
        (ret = vimg_sector_cipher_new(&l->cipher, l->cipher_alg, l->cipher_mode, l->ivgen_alg,
                                      l->ivgen_hash_alg, mk, l->hdr.key_bytes, err)) < 0)
        goto fail;
    /* The header last: until it is written the file is not a LUKS volume at all. */
    luks_encode_header(&l->hdr, buf);
    if ((ret = write_fn(opaque, 0, buf, sizeof(buf), err)) < 0)
        goto fail;
    memcpy(l->mk, mk, sizeof(l->mk));
    OPENSSL_cleanse(mk, sizeof(mk));
    *out = l;
    return 0;
fail:
    OPENSSL_cleanse(mk, sizeof(mk));
    vimg_luks_free(l);
    return ret;
}

/* ---- amend: adding and erasing key slots ---- */

struct luks_amend {
    bool is_active;             /* state=active: add; inactive: erase */
    bool has_keyslot;
    uint64_t keyslot;
    const char *new_secret;
    const char *old_secret;
    uint64_t iter_time_ms;
    bool is_forced;
};

/* A number option; its error names it with prefix, as qemu-img's does. */
static int
luks_amend_number(struct vimg_opts *opts, const char *prefix, const char *name, uint64_t def,
                  uint64_t *out, struct vimg_error *err)
{
    if (vimg_opts_get_number(opts, name, def, out, NULL) < 0)
        return vimg_error_set(err, EINVAL, "Parameter '%s%s' expects a number", prefix, name);
    return 0;
}

static int
luks_amend_parse(struct vimg_opts *opts, const char *prefix, struct luks_amend *a,
                 struct vimg_error *err)
{
    static const char *const states[] = { "active", "inactive", NULL };
    int state, ret;

    /* As qemu-img: numbers are checked before the rest. */
    if ((ret = luks_amend_number(opts, prefix, "keyslot", 0, &a->keyslot, err)) < 0 ||
        (ret = luks_amend_number(opts, prefix, "iter-time", 2000, &a->iter_time_ms, err)) < 0)
        return ret;
    if (!vimg_opts_has(opts, "state"))
        return vimg_error_set(err, EINVAL, "Parameter 'state' is missing");
    if ((ret = vimg_opts_get_enum(opts, "state", states, 0, &state, NULL)) < 0)
        return vimg_error_set(err, EINVAL, "Parameter 'state' does not accept value '%s'",
                              vimg_opts_get(opts, "state"));
    a->is_active = state == 0;
    a->has_keyslot = vimg_opts_has(opts, "keyslot");
    a->new_secret = vimg_opts_get(opts, "new-secret");
    a->old_secret = vimg_opts_get(opts, "old-secret");
    return 0;
}

static int
luks_write_phdr(const struct vimg_luks *l, vimg_luks_write_fn write_fn, void *opaque,
                struct vimg_error *err)
{
    uint8_t buf[VIMG_LUKS_HEADER_SIZE];

    luks_encode_header(&l->hdr, buf);
    return write_fn(opaque, 0, buf, sizeof(buf), err);
}

static unsigned
luks_n_active(const struct vimg_luks *l)
{
    unsigned n = 0;

    for (size_t i = 0; i < VIMG_LUKS_N_SLOTS; i++)
        n += l->hdr.slots[i].active == LUKS_SLOT_ACTIVE;
    return n;
}

/* 1 when pass opens slot index, 0 when not (or the slot is inactive). */
static int
luks_slot_matches(struct vimg_luks *l, size_t index, const char *pass, size_t pass_len,
                  vimg_luks_read_fn read_fn, void *opaque, struct vimg_error *err)
{
    const struct luks_slot *s = &l->hdr.slots[index];
    size_t len = luks_material_len(l);
    uint8_t *material, mk[2 * VIMG_HASH_MAX_DIGEST];
    int ret;

    if (s->active != LUKS_SLOT_ACTIVE)
        return 0;
    if (!(material = malloc(len)))
        return vimg_error_set(err, ENOMEM, "Out of memory");
    ret = read_fn(opaque, (uint64_t)s->key_material_offset * LUKS_SECTOR, material, len, err);
    if (ret == 0)
        ret = luks_try_slot(l, s, pass, pass_len, material, mk, err);
    OPENSSL_cleanse(mk, sizeof(mk));
    OPENSSL_cleanse(material, len);
    free(material);
    return ret;
}

/* Random bytes over the key material, then the slot marked disabled in the header. */
static int
luks_erase_slot(struct vimg_luks *l, size_t index, vimg_luks_write_fn write_fn, void *opaque,
                struct vimg_error *err)
{
    struct luks_slot *s = &l->hdr.slots[index];
    size_t len = luks_material_len(l);
    uint8_t *garbage = malloc(len);
    int ret;

    if (!garbage)
        return vimg_error_set(err, ENOMEM, "Out of memory");
    if ((ret = vimg_random_bytes(garbage, len, err)) == 0)
        ret = write_fn(opaque, (uint64_t)s->key_material_offset * LUKS_SECTOR, garbage, len,
                       err);
    free(garbage);
    if (ret < 0)
        return ret;
    s->active = LUKS_SLOT_DISABLED;
    s->iterations = 0;
    memset(s->salt, 0, sizeof(s->salt));
    return luks_write_phdr(l, write_fn, opaque, err);
}

static int
luks_amend_add(struct vimg_luks *l, const struct luks_amend *a, vimg_luks_write_fn write_fn,
               void *opaque, struct vimg_error *err)
{
    size_t index = 0;
    char *pass = NULL;
    size_t pass_len = 0;
    int ret;

    if (!a->new_secret)
        return vimg_error_set(err, EINVAL, "'new-secret' is required to activate a keyslot");
    if (a->old_secret)
        return vimg_error_set(err, EINVAL, "'old-secret' must not be given when activating "
                              "keyslots");
    if (a->has_keyslot && a->keyslot >= VIMG_LUKS_N_SLOTS)
        return vimg_error_set(err, EINVAL, "Invalid keyslot %u specified, must be between 0 "
                              "and %u", (unsigned)a->keyslot, VIMG_LUKS_N_SLOTS - 1);
    if (a->has_keyslot)
        index = (size_t)a->keyslot;
    while (!a->has_keyslot && index < VIMG_LUKS_N_SLOTS &&
           l->hdr.slots[index].active == LUKS_SLOT_ACTIVE)
        index++;
    if (index == VIMG_LUKS_N_SLOTS)
        return vimg_error_set(err, ENOSPC, "Can't add a keyslot - all keyslots are in use");
    if (!a->is_forced && l->hdr.slots[index].active == LUKS_SLOT_ACTIVE)
        return vimg_error_set(err, EINVAL, "Refusing to overwrite active keyslot %zu - please "
                              "erase it first", index);
    if (!l->cipher)
        return vimg_error_set(err, EINVAL, "The volume is not unlocked");
    if ((ret = vimg_secret_lookup(a->new_secret, &pass, &pass_len, err)) < 0)
        return ret;
    ret = luks_make_slot(l, index, l->mk, pass, pass_len, a->iter_time_ms, write_fn, opaque,
                         err);
    OPENSSL_cleanse(pass, pass_len);
    free(pass);
    return ret < 0 ? ret : luks_write_phdr(l, write_fn, opaque, err);
}

/* The slots to erase: the one given, or all that old_pass opens. */
static int
luks_amend_pick(struct vimg_luks *l, const struct luks_amend *a, const char *old_pass,
                size_t old_len, vimg_luks_read_fn read_fn, void *opaque, unsigned *mask,
                struct vimg_error *err)
{
    int ret;

    *mask = 0;
    if (a->has_keyslot) {
        size_t i = (size_t)a->keyslot;
        if (old_pass && (ret = luks_slot_matches(l, i, old_pass, old_len, read_fn, opaque,
                                                 err)) <= 0)
            return ret < 0 ? ret : vimg_error_set(err, EINVAL, "Given keyslot %zu doesn't "
                                                  "contain the given old password for erase "
                                                  "operation", i);
        if (l->hdr.slots[i].active != LUKS_SLOT_ACTIVE)
            return vimg_error_set(err, EINVAL, "Given keyslot %zu is already erased "
                                  "(inactive) ", i);
        if (!a->is_forced && luks_n_active(l) == 1)
            return vimg_error_set(err, EINVAL, "Attempt to erase the only active keyslot %zu "
                                  "which will erase all the data in the image irreversibly - "
                                  "refusing operation", i);
        *mask = 1u << i;
        return 0;
    }
    for (size_t i = 0; i < VIMG_LUKS_N_SLOTS; i++) {
        if ((ret = luks_slot_matches(l, i, old_pass, old_len, read_fn, opaque, err)) < 0)
            return ret;
        *mask |= ret ? 1u << i : 0;
    }
    if (!*mask)
        return vimg_error_set(err, EINVAL, "No keyslots match given (old) password for erase "
                              "operation");
    if (!a->is_forced && (unsigned)__builtin_popcount(*mask) == luks_n_active(l))
        return vimg_error_set(err, EINVAL, "All the active keyslots match the (old) password "
                              "that was given and erasing them will erase all the data in the "
                              "image irreversibly - refusing operation");
    return 0;
}

static int
luks_amend_erase(struct vimg_luks *l, const struct luks_amend *a, vimg_luks_read_fn read_fn,
                 vimg_luks_write_fn write_fn, void *opaque, struct vimg_error *err)
{
    char *pass = NULL;
    size_t pass_len = 0;
    unsigned mask;
    int ret = 0;

    if (a->new_secret)
        return vimg_error_set(err, EINVAL, "'new-secret' must not be given when erasing "
                              "keyslots");
    if (a->has_keyslot && a->keyslot >= VIMG_LUKS_N_SLOTS)
        return vimg_error_set(err, EINVAL, "Invalid keyslot %u specified, must be between 0 "
                              "and %u", (unsigned)a->keyslot, VIMG_LUKS_N_SLOTS - 1);
    if (!a->has_keyslot && !a->old_secret)
        return vimg_error_set(err, EINVAL, "To erase keyslot(s), either explicit keyslot "
                              "index or the password currently contained in them must be "
                              "given");
    if (a->old_secret && (ret = vimg_secret_lookup(a->old_secret, &pass, &pass_len, err)) < 0)
        return ret;
    ret = luks_amend_pick(l, a, pass, pass_len, read_fn, opaque, &mask, err);
    for (size_t i = 0; ret == 0 && i < VIMG_LUKS_N_SLOTS; i++)
        if (mask & (1u << i))
            ret = luks_erase_slot(l, i, write_fn, opaque, err);
    if (pass)
        OPENSSL_cleanse(pass, pass_len);
    free(pass);
    return ret;
}

int
vimg_luks_amend(struct vimg_luks *luks, struct vimg_opts *opts, const char *prefix,
                bool is_forced, vimg_luks_read_fn read_fn, vimg_luks_write_fn write_fn,
                void *opaque, struct vimg_error *err)
{
    struct luks_amend a = { .is_forced = is_forced };
    int ret;

    if ((ret = luks_amend_parse(opts, prefix, &a, err)) < 0)
        return ret;
    if (a.is_active)
        return luks_amend_add(luks, &a, write_fn, opaque, err);
    return luks_amend_erase(luks, &a, read_fn, write_fn, opaque, err);
}
