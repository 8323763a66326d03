/*
 * Ciphers, hashes and PBKDF2 over OpenSSL libcrypto, and sector encryption
 * as dm-crypt and QEMU do it: each 512-byte sector is encrypted on its own
 * with an IV made from its number (plain: low 32 bits, plain64: 64 bits,
 * essiv: the 64-bit number encrypted with a key hashed from the data key).
 *
 * libcrypto has AES and CAST5 (the latter in its "legacy" provider), but no
 * Serpent or Twofish: those fail with an error naming the algorithm. Modes
 * libcrypto lacks for an algorithm (AES-192 XTS, CAST5 CTR) are built here
 * over its ECB mode.
 */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/kdf.h>
#include <openssl/params.h>
#include <openssl/provider.h>
#include <openssl/rand.h>

#include "crypto/cipher.h"

#define MAX_BLOCK_LEN 16u
/* Calibration stops once a run takes this much CPU time, or at this many iterations. */
#define CALIBRATE_NS 20000000ull
#define CALIBRATE_MAX_ITERS (1u << 30)

struct cipher_info {
    const char *name;           /* QEMU's name */
    const char *family;         /* as LUKS headers and messages name it */
    const char *ossl;           /* libcrypto's name prefix; NULL when it has none */
    size_t key_len;
    size_t block_len;
};

static const struct cipher_info ciphers[VIMG_CIPHER__MAX] = {
    [VIMG_CIPHER_AES_128] = { "aes-128", "aes", "AES-128", 16, 16 },
    [VIMG_CIPHER_AES_192] = { "aes-192", "aes", "AES-192", 24, 16 },
    [VIMG_CIPHER_AES_256] = { "aes-256", "aes", "AES-256", 32, 16 },
    [VIMG_CIPHER_DES] = { "des", "des", NULL, 8, 8 },
    [VIMG_CIPHER_3DES] = { "3des", "3des", NULL, 24, 8 },
    [VIMG_CIPHER_CAST5_128] = { "cast5-128", "cast5", "CAST5", 16, 8 },
    [VIMG_CIPHER_SERPENT_128] = { "serpent-128", "serpent", NULL, 16, 16 },
    [VIMG_CIPHER_SERPENT_192] = { "serpent-192", "serpent", NULL, 24, 16 },
    [VIMG_CIPHER_SERPENT_256] = { "serpent-256", "serpent", NULL, 32, 16 },
    [VIMG_CIPHER_TWOFISH_128] = { "twofish-128", "twofish", NULL, 16, 16 },
    [VIMG_CIPHER_TWOFISH_192] = { "twofish-192", "twofish", NULL, 24, 16 },
    [VIMG_CIPHER_TWOFISH_256] = { "twofish-256", "twofish", NULL, 32, 16 },
};

static const char *const mode_names[VIMG_CIPHER_MODE__MAX] = { "ecb", "cbc", "xts", "ctr" };
static const char *const mode_ossl[VIMG_CIPHER_MODE__MAX] = { "ECB", "CBC", "XTS", "CTR" };
static const char *const ivgen_names[VIMG_IVGEN__MAX] = { "plain", "plain64", "essiv" };

struct hash_info {
    const char *name;
    const char *ossl;
    size_t digest_len;
};

static const struct hash_info hashes[VIMG_HASH__MAX] = {
    [VIMG_HASH_MD5] = { "md5", "MD5", 16 },
    [VIMG_HASH_SHA1] = { "sha1", "SHA1", 20 },
    [VIMG_HASH_SHA224] = { "sha224", "SHA224", 28 },
    [VIMG_HASH_SHA256] = { "sha256", "SHA256", 32 },
    [VIMG_HASH_SHA384] = { "sha384", "SHA384", 48 },
    [VIMG_HASH_SHA512] = { "sha512", "SHA512", 64 },
    [VIMG_HASH_RIPEMD160] = { "ripemd160", "RIPEMD160", 20 },
};

const char *
vimg_cipher_alg_name(enum vimg_cipher_alg alg)
{
    return ciphers[alg].name;
}

const char *
vimg_cipher_mode_name(enum vimg_cipher_mode mode)
{
    return mode_names[mode];
}

const char *
vimg_ivgen_alg_name(enum vimg_ivgen_alg ivgen)
{
    return ivgen_names[ivgen];
}

const char *
vimg_hash_alg_name(enum vimg_hash_alg hash)
{
    return hashes[hash].name;
}

int
vimg_cipher_alg_parse(const char *name)
{
    for (int i = 0; i < VIMG_CIPHER__MAX; i++)
        if (strcmp(name, ciphers[i].name) == 0)
            return i;
    return -1;
}

int
vimg_cipher_mode_parse(const char *name)
{
    for (int i = 0; i < VIMG_CIPHER_MODE__MAX; i++)
        if (strcmp(name, mode_names[i]) == 0)
            return i;
    return -1;
}

int
vimg_ivgen_alg_parse(const char *name)
{
    for (int i = 0; i < VIMG_IVGEN__MAX; i++)
        if (strcmp(name, ivgen_names[i]) == 0)
            return i;
    return -1;
}

int
vimg_hash_alg_parse(const char *name)
{
    for (int i = 0; i < VIMG_HASH__MAX; i++)
        if (strcmp(name, hashes[i].name) == 0)
            return i;
    return -1;
}

size_t
vimg_cipher_key_len(enum vimg_cipher_alg alg)
{
    return ciphers[alg].key_len;
}

size_t
vimg_cipher_block_len(enum vimg_cipher_alg alg)
{
    return ciphers[alg].block_len;
}

size_t
vimg_hash_digest_len(enum vimg_hash_alg hash)
{
    return hashes[hash].digest_len;
}

/* CAST5 lives in libcrypto's legacy provider: a library context of our own holds it. */
static pthread_once_t legacy_once = PTHREAD_ONCE_INIT;
static OSSL_LIB_CTX *legacy_ctx;        /* written once under legacy_once */

static void
legacy_init(void)
{
    OSSL_LIB_CTX *ctx = OSSL_LIB_CTX_new();

    if (ctx && OSSL_PROVIDER_load(ctx, "legacy") && OSSL_PROVIDER_load(ctx, "default"))
        legacy_ctx = ctx;
    else
        OSSL_LIB_CTX_free(ctx);
    ERR_clear_error();
}

static EVP_CIPHER *
cipher_fetch(const char *name)
{
    EVP_CIPHER *c = EVP_CIPHER_fetch(NULL, name, NULL);

    if (c)
        return c;
    ERR_clear_error();
    pthread_once(&legacy_once, legacy_init);
    if (legacy_ctx)
        c = EVP_CIPHER_fetch(legacy_ctx, name, NULL);
    ERR_clear_error();
    return c;
}

static EVP_CIPHER *
cipher_fetch_mode(enum vimg_cipher_alg alg, enum vimg_cipher_mode mode)
{
    char name[64];

    if (!ciphers[alg].ossl)
        return NULL;
    snprintf(name, sizeof(name), "%s-%s", ciphers[alg].ossl, mode_ossl[mode]);
    if (alg == VIMG_CIPHER_CAST5_128)   /* libcrypto calls it CAST5, whatever its key length */
        snprintf(name, sizeof(name), "CAST5-%s", mode_ossl[mode]);
    return cipher_fetch(name);
}

static int
cipher_unavailable(enum vimg_cipher_alg alg, struct vimg_error *err)
{
    return vimg_error_set(err, ENOTSUP, "Cipher algorithm '%s' is not available: OpenSSL "
                          "libcrypto has no %s", ciphers[alg].name, ciphers[alg].family);
}

static EVP_MD *
md_fetch(enum vimg_hash_alg hash, struct vimg_error *err)
{
    EVP_MD *md = EVP_MD_fetch(NULL, hashes[hash].ossl, NULL);

    if (!md) {
        ERR_clear_error();
        vimg_error_set(err, ENOTSUP, "Hash algorithm '%s' is not available in OpenSSL "
                       "libcrypto", hashes[hash].name);
    }
    return md;
}

struct vimg_hash_ctx {
    EVP_MD *md;
    EVP_MD_CTX *ctx;
};

struct vimg_hash_ctx *
vimg_hash_ctx_new(enum vimg_hash_alg hash, struct vimg_error *err)
{
    struct vimg_hash_ctx *h = calloc(1, sizeof(*h));

    if (!h) {
        vimg_error_set(err, ENOMEM, "Out of memory");
        return NULL;
    }
    if (!(h->md = md_fetch(hash, err))) {
        free(h);
        return NULL;
    }
    if (!(h->ctx = EVP_MD_CTX_new())) {
        vimg_hash_ctx_free(h);
        vimg_error_set(err, ENOMEM, "Out of memory");
        return NULL;
    }
    return h;
}

void
vimg_hash_ctx_free(struct vimg_hash_ctx *h)
{
    if (!h)
        return;
    EVP_MD_CTX_free(h->ctx);
    EVP_MD_free(h->md);
    free(h);
}

int
vimg_hash_ctx_digest(struct vimg_hash_ctx *h, const void *a, size_t a_len, const void *b,
                     size_t b_len, uint8_t *out, struct vimg_error *err)
{
    unsigned n = 0;

    if (EVP_DigestInit_ex2(h->ctx, h->md, NULL) != 1 ||
        EVP_DigestUpdate(h->ctx, a, a_len) != 1 || EVP_DigestUpdate(h->ctx, b, b_len) != 1 ||
        EVP_DigestFinal_ex(h->ctx, out, &n) != 1) {
        ERR_clear_error();
        return vimg_error_set(err, EIO, "Unable to compute %s hash", EVP_MD_get0_name(h->md));
    }
    return 0;
}

int
vimg_hash_bytes(enum vimg_hash_alg hash, const void *data, size_t len, uint8_t *out,
                struct vimg_error *err)
{
    EVP_MD *md = md_fetch(hash, err);
    unsigned n = 0;
    int ok;

    if (!md)
        return -ENOTSUP;
    ok = EVP_Digest(data, len, out, &n, md, NULL);
    EVP_MD_free(md);
    if (!ok) {
        ERR_clear_error();
        return vimg_error_set(err, EIO, "Unable to compute %s hash", hashes[hash].name);
    }
    return 0;
}

int
vimg_random_bytes(void *buf, size_t len, struct vimg_error *err)
{
    if (len > INT32_MAX || RAND_bytes(buf, (int)len) != 1) {
        ERR_clear_error();
        return vimg_error_set(err, EIO, "Unable to read random bytes");
    }
    return 0;
}

int
vimg_pbkdf2(enum vimg_hash_alg hash, const void *pass, size_t pass_len, const uint8_t *salt,
            size_t salt_len, uint32_t iterations, uint8_t *out, size_t out_len,
            struct vimg_error *err)
{
    EVP_KDF *kdf = EVP_KDF_fetch(NULL, OSSL_KDF_NAME_PBKDF2, NULL);
    EVP_KDF_CTX *ctx = kdf ? EVP_KDF_CTX_new(kdf) : NULL;
    uint64_t iter = iterations;
    int pkcs5 = 1;      /* no lower bounds on salt, key and iteration count */
    OSSL_PARAM params[] = {
        OSSL_PARAM_octet_string(OSSL_KDF_PARAM_PASSWORD, (void *)pass, pass_len),
        OSSL_PARAM_octet_string(OSSL_KDF_PARAM_SALT, (void *)salt, salt_len),
        OSSL_PARAM_uint64(OSSL_KDF_PARAM_ITER, &iter),
        OSSL_PARAM_utf8_string(OSSL_KDF_PARAM_DIGEST, (char *)hashes[hash].ossl, 0),
        OSSL_PARAM_int(OSSL_KDF_PARAM_PKCS5, &pkcs5),
        OSSL_PARAM_END,
    };
    int ok = ctx && EVP_KDF_derive(ctx, out, out_len, params) == 1;

    EVP_KDF_CTX_free(ctx);
    EVP_KDF_free(kdf);
    if (!ok) {
        ERR_clear_error();
        return vimg_error_set(err, EIO, "PBKDF2 with %s failed", hashes[hash].name);
    }
    return 0;
}

static uint64_t
thread_cpu_ns(void)
{
    struct timespec ts;

    if (clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts) < 0)
        return 0;
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* Iterations per second of PBKDF2 producing out_len bytes, on this thread. */
static int
pbkdf2_rate(enum vimg_hash_alg hash, size_t out_len, uint64_t *per_sec,
            struct vimg_error *err)
{
    static const char pass[] = "calibration";
    uint8_t salt[32] = { 0 }, out[2 * VIMG_HASH_MAX_DIGEST * 4];
    uint32_t iters = 1024;
    int ret;

    if (out_len > sizeof(out))
        out_len = sizeof(out);
    for (;;) {
        uint64_t start = thread_cpu_ns(), ns;
        if ((ret = vimg_pbkdf2(hash, pass, sizeof(pass) - 1, salt, sizeof(salt), iters, out,
                               out_len, err)) < 0)
            return ret;
        ns = thread_cpu_ns() - start;
        if (ns >= CALIBRATE_NS) {
            *per_sec = (uint64_t)((unsigned __int128)iters * 1000000000u / ns);
            return 0;
        }
        if (iters >= CALIBRATE_MAX_ITERS)
            return vimg_error_set(err, EIO, "Unable to get accurate CPU usage");
        iters *= 2;
    }
}

int
vimg_pbkdf2_count_iters(enum vimg_hash_alg hash, size_t out_len, uint64_t iter_ms,
                        unsigned divisor, uint64_t *iters, struct vimg_error *err)
{
    uint64_t per_sec, total;
    int ret;

    if ((ret = pbkdf2_rate(hash, out_len, &per_sec, err)) < 0)
        return ret;
    if (__builtin_mul_overflow(per_sec, iter_ms, &total))
        return vimg_error_set(err, ERANGE, "PBKDF iterations %" PRIu64 " too large to scale: "
                              "%s", per_sec, strerror(ERANGE));
    total /= 1000 * (uint64_t)(divisor ? divisor : 1);
    if (total > UINT32_MAX)
        return vimg_error_set(err, ERANGE, "PBKDF iterations %" PRIu64 " larger than %u: %s",
                              total, UINT32_MAX, strerror(ERANGE));
    *iters = total;
    return 0;
}

/* The cipher ESSIV encrypts IVs with: the same family, keyed by a digest of hash. */
static int
essiv_alg(enum vimg_cipher_alg alg, enum vimg_hash_alg hash, enum vimg_cipher_alg *out,
          struct vimg_error *err)
{
    size_t n = hashes[hash].digest_len;
    const char *label = "AES";

    switch (alg) {
    case VIMG_CIPHER_AES_128: case VIMG_CIPHER_AES_192: case VIMG_CIPHER_AES_256:
        *out = n == 16 ? VIMG_CIPHER_AES_128 : n == 24 ? VIMG_CIPHER_AES_192
             : VIMG_CIPHER_AES_256;
        break;
    case VIMG_CIPHER_SERPENT_128: case VIMG_CIPHER_SERPENT_192: case VIMG_CIPHER_SERPENT_256:
        label = "Serpent";
        *out = n == 16 ? VIMG_CIPHER_SERPENT_128 : n == 24 ? VIMG_CIPHER_SERPENT_192
             : VIMG_CIPHER_SERPENT_256;
        break;
    case VIMG_CIPHER_TWOFISH_128: case VIMG_CIPHER_TWOFISH_192: case VIMG_CIPHER_TWOFISH_256:
        label = "Twofish";
        *out = n == 16 ? VIMG_CIPHER_TWOFISH_128 : n == 24 ? VIMG_CIPHER_TWOFISH_192
             : VIMG_CIPHER_TWOFISH_256;
        break;
    default:
        return vimg_error_set(err, ENOTSUP, "Cipher %s not supported with essiv",
                              ciphers[alg].name);
    }
    if (n != 16 && n != 24 && n != 32)
        return vimg_error_set(err, EINVAL, "No %s cipher with key size %zu available", label, n);
    return 0;
}

static int
cipher_check_available(enum vimg_cipher_alg alg, struct vimg_error *err)
{
    EVP_CIPHER *c = cipher_fetch_mode(alg, VIMG_CIPHER_MODE_ECB);

    if (!c)
        return cipher_unavailable(alg, err);
    EVP_CIPHER_free(c);
    return 0;
}

int
vimg_ivgen_check(enum vimg_cipher_alg alg, enum vimg_ivgen_alg ivgen,
                 enum vimg_hash_alg ivgen_hash, struct vimg_error *err)
{
    enum vimg_cipher_alg essiv;

    return ivgen == VIMG_IVGEN_ESSIV ? essiv_alg(alg, ivgen_hash, &essiv, err) : 0;
}

int
vimg_sector_cipher_check(enum vimg_cipher_alg alg, enum vimg_cipher_mode mode,
                         enum vimg_ivgen_alg ivgen, enum vimg_hash_alg ivgen_hash,
                         struct vimg_error *err)
{
    enum vimg_cipher_alg essiv;
    int ret;

    if (mode == VIMG_CIPHER_MODE_XTS && ciphers[alg].block_len != 16)
        return vimg_error_set(err, ENOTSUP, "Unsupported cipher mode %s", mode_names[mode]);
    if (ivgen == VIMG_IVGEN_ESSIV) {
        if ((ret = essiv_alg(alg, ivgen_hash, &essiv, err)) < 0 ||
            (ret = cipher_check_available(essiv, err)) < 0)
            return ret;
    }
    return cipher_check_available(alg, err);
}

struct vimg_sector_cipher {
    enum vimg_cipher_mode mode;
    enum vimg_ivgen_alg ivgen;
    size_t block_len;
    size_t iv_len;              /* 0 for ECB */
    bool is_generic;            /* XTS/CTR built here over ECB */
    EVP_CIPHER_CTX *enc;        /* keyed templates, copied per call */
    EVP_CIPHER_CTX *dec;
    EVP_CIPHER_CTX *tweak;      /* generic XTS: ECB encryption with the second key */
    EVP_CIPHER_CTX *essiv;      /* ECB encryption with the hashed key */
};

static EVP_CIPHER_CTX *
ctx_keyed(const EVP_CIPHER *cipher, const uint8_t *key, int is_enc)
{
    EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();

    if (!ctx || EVP_CipherInit_ex2(ctx, cipher, key, NULL, is_enc, NULL) != 1 ||
        EVP_CIPHER_CTX_set_padding(ctx, 0) != 1) {
        EVP_CIPHER_CTX_free(ctx);
        ERR_clear_error();
        return NULL;
    }
    return ctx;
}

static int
sector_cipher_key_essiv(struct vimg_sector_cipher *c, enum vimg_cipher_alg alg,
                        enum vimg_hash_alg hash, const uint8_t *key, size_t key_len,
                        struct vimg_error *err)
{
    uint8_t digest[VIMG_HASH_MAX_DIGEST];
    enum vimg_cipher_alg essiv;
    EVP_CIPHER *cipher;
    int ret;

    if ((ret = essiv_alg(alg, hash, &essiv, err)) < 0)
        return ret;
    if (!(cipher = cipher_fetch_mode(essiv, VIMG_CIPHER_MODE_ECB)))
        return cipher_unavailable(essiv, err);
    ret = vimg_hash_bytes(hash, key, key_len, digest, err);
    if (ret == 0 && !(c->essiv = ctx_keyed(cipher, digest, 1)))
        ret = vimg_error_set(err, EIO, "Unable to key the ESSIV cipher");
    OPENSSL_cleanse(digest, sizeof(digest));
    EVP_CIPHER_free(cipher);
    return ret;
}

/* Keys enc/dec with libcrypto's own mode, or ECB for the modes built here. */
static int
sector_cipher_key_data(struct vimg_sector_cipher *c, enum vimg_cipher_alg alg,
                       const uint8_t *key, struct vimg_error *err)
{
    EVP_CIPHER *cipher = cipher_fetch_mode(alg, c->mode);
    size_t klen = ciphers[alg].key_len;
    int ret = 0;

    if (!cipher && (c->mode == VIMG_CIPHER_MODE_XTS || c->mode == VIMG_CIPHER_MODE_CTR)) {
        c->is_generic = true;
        cipher = cipher_fetch_mode(alg, VIMG_CIPHER_MODE_ECB);
    }
    if (!cipher)
        return cipher_unavailable(alg, err);
    c->enc = ctx_keyed(cipher, key, 1);
    c->dec = ctx_keyed(cipher, key, 0);
    if (c->is_generic && c->mode == VIMG_CIPHER_MODE_XTS)
        c->tweak = ctx_keyed(cipher, key + klen, 1);
    if (!c->enc || !c->dec || (c->is_generic && c->mode == VIMG_CIPHER_MODE_XTS && !c->tweak))
        ret = vimg_error_set(err, EINVAL, "Unable to key cipher '%s' in mode %s",
                             ciphers[alg].name, mode_names[c->mode]);
    EVP_CIPHER_free(cipher);
    return ret;
}

int
vimg_sector_cipher_new(struct vimg_sector_cipher **out, enum vimg_cipher_alg alg,
                       enum vimg_cipher_mode mode, enum vimg_ivgen_alg ivgen,
                       enum vimg_hash_alg ivgen_hash, const uint8_t *key, size_t key_len,
                       struct vimg_error *err)
{
    size_t want = ciphers[alg].key_len * (mode == VIMG_CIPHER_MODE_XTS ? 2 : 1);
    struct vimg_sector_cipher *c;
    int ret;

    if ((ret = vimg_sector_cipher_check(alg, mode, ivgen, ivgen_hash, err)) < 0)
        return ret;
    if (key_len != want)
        return vimg_error_set(err, EINVAL, "Cipher key length %zu does not match %s-%s (%zu)",
                              key_len, ciphers[alg].name, mode_names[mode], want);
    if (!(c = calloc(1, sizeof(*c))))
        return vimg_error_set(err, ENOMEM, "Out of memory");
    c->mode = mode;
    c->ivgen = ivgen;
    c->block_len = ciphers[alg].block_len;
    c->iv_len = mode == VIMG_CIPHER_MODE_ECB ? 0 : c->block_len;
    if ((ret = sector_cipher_key_data(c, alg, key, err)) == 0 && ivgen == VIMG_IVGEN_ESSIV)
        ret = sector_cipher_key_essiv(c, alg, ivgen_hash, key, key_len, err);
    if (ret < 0) {
        vimg_sector_cipher_free(c);
        return ret;
    }
    *out = c;
    return 0;
}

void
vimg_sector_cipher_free(struct vimg_sector_cipher *c)
{
    if (!c)
        return;
    EVP_CIPHER_CTX_free(c->enc);
    EVP_CIPHER_CTX_free(c->dec);
    EVP_CIPHER_CTX_free(c->tweak);
    EVP_CIPHER_CTX_free(c->essiv);
    free(c);
}

/* The contexts one call works with: private copies of the templates. */
struct crypt_call {
    EVP_CIPHER_CTX *data;
    EVP_CIPHER_CTX *tweak;
    EVP_CIPHER_CTX *essiv;
};

static EVP_CIPHER_CTX *
ctx_dup(const EVP_CIPHER_CTX *src)
{
    EVP_CIPHER_CTX *ctx;

    if (!src)
        return NULL;
    ctx = EVP_CIPHER_CTX_new();
    if (ctx && EVP_CIPHER_CTX_copy(ctx, src) != 1) {
        EVP_CIPHER_CTX_free(ctx);
        ctx = NULL;
    }
    return ctx;
}

static void
crypt_call_end(struct crypt_call *call)
{
    EVP_CIPHER_CTX_free(call->data);
    EVP_CIPHER_CTX_free(call->tweak);
    EVP_CIPHER_CTX_free(call->essiv);
    ERR_clear_error();
}

static int
crypt_call_begin(const struct vimg_sector_cipher *c, bool is_enc, struct crypt_call *call,
                 struct vimg_error *err)
{
    /* CTR decrypts by encrypting, and so does XTS built here, except for the data key. */
    bool use_enc = is_enc || c->mode == VIMG_CIPHER_MODE_CTR;

    call->data = ctx_dup(use_enc ? c->enc : c->dec);
    call->tweak = ctx_dup(c->tweak);
    call->essiv = ctx_dup(c->essiv);
    if (!call->data || (c->tweak && !call->tweak) || (c->essiv && !call->essiv)) {
        crypt_call_end(call);
        return vimg_error_set(err, ENOMEM, "Out of memory");
    }
    return 0;
}

static int
ecb_update(EVP_CIPHER_CTX *ctx, uint8_t *buf, size_t len)
{
    int n = 0;

    return EVP_CipherUpdate(ctx, buf, &n, buf, (int)len) == 1 && (size_t)n == len ? 0 : -EIO;
}

static int
sector_iv(const struct vimg_sector_cipher *c, struct crypt_call *call, uint64_t sector,
          uint8_t *iv)
{
    uint64_t n = c->ivgen == VIMG_IVGEN_PLAIN ? (sector & 0xffffffffu) : sector;

    memset(iv, 0, c->iv_len);
    for (size_t i = 0; i < 8 && i < c->iv_len; i++)
        iv[i] = (uint8_t)(n >> (8 * i));
    if (c->ivgen == VIMG_IVGEN_ESSIV)
        return ecb_update(call->essiv, iv, c->iv_len);
    return 0;
}

/* Multiplies an XTS tweak by x in GF(2^128), little-endian as IEEE 1619 has it. */
static void
xts_double(uint8_t *t)
{
    uint8_t carry = t[15] >> 7;

    for (int i = 15; i > 0; i--)
        t[i] = (uint8_t)((t[i] << 1) | (t[i - 1] >> 7));
    t[0] = (uint8_t)((t[0] << 1) ^ (carry ? 0x87 : 0));
}

static int
xts_sector(struct crypt_call *call, const uint8_t *iv, uint8_t *buf)
{
    uint8_t tweaks[VIMG_CRYPT_SECTOR_SIZE], t[16];

    memcpy(t, iv, 16);
    if (ecb_update(call->tweak, t, 16) < 0)
        return -EIO;
    for (size_t off = 0; off < VIMG_CRYPT_SECTOR_SIZE; off += 16) {
        memcpy(tweaks + off, t, 16);
        xts_double(t);
    }
    for (size_t i = 0; i < VIMG_CRYPT_SECTOR_SIZE; i++)
        buf[i] ^= tweaks[i];
    if (ecb_update(call->data, buf, VIMG_CRYPT_SECTOR_SIZE) < 0)
        return -EIO;
    for (size_t i = 0; i < VIMG_CRYPT_SECTOR_SIZE; i++)
        buf[i] ^= tweaks[i];
    return 0;
}

/* CTR: the IV is the first counter block, incremented as a big-endian number. */
static int
ctr_sector(struct crypt_call *call, size_t block_len, const uint8_t *iv, uint8_t *buf)
{
    uint8_t stream[VIMG_CRYPT_SECTOR_SIZE], ctr[MAX_BLOCK_LEN];

    memcpy(ctr, iv, block_len);
    for (size_t off = 0; off < VIMG_CRYPT_SECTOR_SIZE; off += block_len) {
        memcpy(stream + off, ctr, block_len);
        for (size_t i = block_len; i-- > 0 && ++ctr[i] == 0;)
            ;
    }
    if (ecb_update(call->data, stream, VIMG_CRYPT_SECTOR_SIZE) < 0)
        return -EIO;
    for (size_t i = 0; i < VIMG_CRYPT_SECTOR_SIZE; i++)
        buf[i] ^= stream[i];
    return 0;
}

static int
sector_crypt_one(const struct vimg_sector_cipher *c, struct crypt_call *call, uint64_t sector,
                 uint8_t *buf)
{
    uint8_t iv[MAX_BLOCK_LEN];

    if (c->iv_len && sector_iv(c, call, sector, iv) < 0)
        return -EIO;
    if (c->is_generic && c->mode == VIMG_CIPHER_MODE_XTS)
        return xts_sector(call, iv, buf);
    if (c->is_generic)
        return ctr_sector(call, c->block_len, iv, buf);
    if (c->iv_len && EVP_CipherInit_ex2(call->data, NULL, NULL, iv, -1, NULL) != 1)
        return -EIO;
    return ecb_update(call->data, buf, VIMG_CRYPT_SECTOR_SIZE);
}

static int
sector_crypt(struct vimg_sector_cipher *c, bool is_enc, uint64_t sector, uint8_t *buf,
             size_t len, struct vimg_error *err)
{
    struct crypt_call call;
    int ret = 0;

    if (len % VIMG_CRYPT_SECTOR_SIZE)
        return vimg_error_set(err, EINVAL, "Length %zu is not a multiple of the sector size",
                              len);
    if ((ret = crypt_call_begin(c, is_enc, &call, err)) < 0)
        return ret;
    for (size_t off = 0; off < len && ret == 0; off += VIMG_CRYPT_SECTOR_SIZE, sector++)
        ret = sector_crypt_one(c, &call, sector, buf + off);
    crypt_call_end(&call);
    if (ret < 0)
        return vimg_error_set(err, EIO, "Unable to %s sector %" PRIu64,
                              is_enc ? "encrypt" : "decrypt", sector);
    return 0;
}

int
vimg_sector_encrypt(struct vimg_sector_cipher *c, uint64_t sector, uint8_t *buf, size_t len,
                    struct vimg_error *err)
{
    return sector_crypt(c, true, sector, buf, len, err);
}

int
vimg_sector_decrypt(struct vimg_sector_cipher *c, uint64_t sector, uint8_t *buf, size_t len,
                    struct vimg_error *err)
{
    return sector_crypt(c, false, sector, buf, len, err);
}
