/*
 * Block ciphers, hashes, PBKDF2 and sector encryption (cipher + mode + IV
 * generator) over OpenSSL libcrypto, with QEMU's algorithm names. Shared by
 * the LUKS format and (later) qcow2's encrypt.format=luks.
 */
#ifndef VIMG_CRYPTO_CIPHER_H
#define VIMG_CRYPTO_CIPHER_H

#include <stddef.h>
#include <stdint.h>

#include <vimg/error.h>

/* Sector encryption works in units of this many bytes (LUKS1, qcow2 LUKS). */
#define VIMG_CRYPT_SECTOR_SIZE 512u

/* In the order of QEMU's QCryptoCipherAlgorithm, whose names they take. */
enum vimg_cipher_alg {
    VIMG_CIPHER_AES_128,
    VIMG_CIPHER_AES_192,
    VIMG_CIPHER_AES_256,
    VIMG_CIPHER_DES,
    VIMG_CIPHER_3DES,
    VIMG_CIPHER_CAST5_128,
    VIMG_CIPHER_SERPENT_128,
    VIMG_CIPHER_SERPENT_192,
    VIMG_CIPHER_SERPENT_256,
    VIMG_CIPHER_TWOFISH_128,
    VIMG_CIPHER_TWOFISH_192,
    VIMG_CIPHER_TWOFISH_256,
    VIMG_CIPHER__MAX,
};

enum vimg_cipher_mode {
    VIMG_CIPHER_MODE_ECB,
    VIMG_CIPHER_MODE_CBC,
    VIMG_CIPHER_MODE_XTS,
    VIMG_CIPHER_MODE_CTR,
    VIMG_CIPHER_MODE__MAX,
};

enum vimg_ivgen_alg {
    VIMG_IVGEN_PLAIN,
    VIMG_IVGEN_PLAIN64,
    VIMG_IVGEN_ESSIV,
    VIMG_IVGEN__MAX,
};

enum vimg_hash_alg {
    VIMG_HASH_MD5,
    VIMG_HASH_SHA1,
    VIMG_HASH_SHA224,
    VIMG_HASH_SHA256,
    VIMG_HASH_SHA384,
    VIMG_HASH_SHA512,
    VIMG_HASH_RIPEMD160,
    VIMG_HASH__MAX,
};

#define VIMG_HASH_MAX_DIGEST 64u

/* Names as QEMU spells them ("aes-256", "xts", "plain64", "sha256"); parsers give -1
 * for an unknown name. */
const char *vimg_cipher_alg_name(enum vimg_cipher_alg alg);
const char *vimg_cipher_mode_name(enum vimg_cipher_mode mode);
const char *vimg_ivgen_alg_name(enum vimg_ivgen_alg ivgen);
const char *vimg_hash_alg_name(enum vimg_hash_alg hash);
int vimg_cipher_alg_parse(const char *name);
int vimg_cipher_mode_parse(const char *name);
int vimg_ivgen_alg_parse(const char *name);
int vimg_hash_alg_parse(const char *name);

/* The key and block sizes of one cipher instance (XTS takes two keys). */
size_t vimg_cipher_key_len(enum vimg_cipher_alg alg);
size_t vimg_cipher_block_len(enum vimg_cipher_alg alg);
size_t vimg_hash_digest_len(enum vimg_hash_alg hash);

/* A reusable digest context for one algorithm (AF diffusion hashes thousands of blocks). */
struct vimg_hash_ctx;
struct vimg_hash_ctx *vimg_hash_ctx_new(enum vimg_hash_alg hash, struct vimg_error *err);
void vimg_hash_ctx_free(struct vimg_hash_ctx *ctx);
/* out = hash(a || b). */
int vimg_hash_ctx_digest(struct vimg_hash_ctx *ctx, const void *a, size_t a_len, const void *b,
                         size_t b_len, uint8_t *out, struct vimg_error *err);

int vimg_hash_bytes(enum vimg_hash_alg hash, const void *data, size_t len, uint8_t *out,
                    struct vimg_error *err);
int vimg_random_bytes(void *buf, size_t len, struct vimg_error *err);

/* PBKDF2-HMAC: out_len bytes of key from pass and salt. */
int vimg_pbkdf2(enum vimg_hash_alg hash, const void *pass, size_t pass_len,
                const uint8_t *salt, size_t salt_len, uint32_t iterations,
                uint8_t *out, size_t out_len, struct vimg_error *err);
/*
 * How many PBKDF2 iterations producing out_len bytes take about iter_ms /
 * divisor milliseconds of this thread's CPU time, measured here (QEMU's
 * texts when the result does not fit in 32 bits).
 */
int vimg_pbkdf2_count_iters(enum vimg_hash_alg hash, size_t out_len, uint64_t iter_ms,
                            unsigned divisor, uint64_t *iters, struct vimg_error *err);

/*
 * The checks QEMU makes on a cipher specification before it keys anything:
 * the algorithm exists for LUKS, the mode suits its block size, ESSIV's
 * hash gives a usable key. Also fails for algorithms libcrypto lacks.
 */
int vimg_sector_cipher_check(enum vimg_cipher_alg alg, enum vimg_cipher_mode mode,
                             enum vimg_ivgen_alg ivgen, enum vimg_hash_alg ivgen_hash,
                             struct vimg_error *err);

/* The ESSIV part of that check alone: the hash gives a key the cipher family takes. */
int vimg_ivgen_check(enum vimg_cipher_alg alg, enum vimg_ivgen_alg ivgen,
                     enum vimg_hash_alg ivgen_hash, struct vimg_error *err);

/*
 * A keyed cipher with its IV generator. Thread-safe: each call works on its
 * own copy of the keyed contexts.
 */
struct vimg_sector_cipher;

int vimg_sector_cipher_new(struct vimg_sector_cipher **out, enum vimg_cipher_alg alg,
                           enum vimg_cipher_mode mode, enum vimg_ivgen_alg ivgen,
                           enum vimg_hash_alg ivgen_hash, const uint8_t *key, size_t key_len,
                           struct vimg_error *err);
void vimg_sector_cipher_free(struct vimg_sector_cipher *c);
/* In place; len is a multiple of VIMG_CRYPT_SECTOR_SIZE, sector numbers the first one. */
int vimg_sector_encrypt(struct vimg_sector_cipher *c, uint64_t sector, uint8_t *buf,
                        size_t len, struct vimg_error *err);
int vimg_sector_decrypt(struct vimg_sector_cipher *c, uint64_t sector, uint8_t *buf,
                        size_t len, struct vimg_error *err);

#endif
