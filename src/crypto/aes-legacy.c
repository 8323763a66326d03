/*
 * Legacy qcow/qcow2 AES (qcow2.rst "Data encryption", crypt_method 1). The
 * spec's text speaks of 256-bit keys; QEMU, whose images are the ones that
 * exist, keys AES-128 with the passphrase cut or zero-padded to 16 bytes,
 * and that is what is done here (checked against images qemu-img writes).
 * There is no key check: a wrong passphrase gives wrong data.
 */
#include <string.h>

#include <openssl/crypto.h>

#include "crypto/aes-legacy.h"

int
vimg_aes_legacy_new(struct vimg_sector_cipher **out, const char *pass, size_t pass_len,
                    struct vimg_error *err)
{
    uint8_t key[VIMG_AES_LEGACY_KEY_LEN] = { 0 };
    int ret;

    memcpy(key, pass, pass_len < sizeof(key) ? pass_len : sizeof(key));
    ret = vimg_sector_cipher_new(out, VIMG_CIPHER_AES_128, VIMG_CIPHER_MODE_CBC,
                                 VIMG_IVGEN_PLAIN64, VIMG_HASH_SHA256, key, sizeof(key), err);
    OPENSSL_cleanse(key, sizeof(key));
    return ret;
}
