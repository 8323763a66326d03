/*
 * The legacy AES encryption of qcow (version 1) and qcow2 images
 * (crypt_method 1): AES-128 in CBC mode over each 512-byte sector, the IV
 * the sector number as a 64-bit little-endian number (plain64), the key the
 * passphrase's first 16 bytes, zero padded. Shared by the qcow and qcow2
 * drivers; the sector number is the guest sector (offset / 512).
 */
#ifndef VIMG_CRYPTO_AES_LEGACY_H
#define VIMG_CRYPTO_AES_LEGACY_H

#include <stddef.h>

#include <vimg/error.h>

#include "crypto/cipher.h"

/* Longest passphrase that counts: the rest is ignored, as QEMU ignores it. */
#define VIMG_AES_LEGACY_KEY_LEN 16u

/*
 * A sector cipher keyed from pass for vimg_sector_encrypt/decrypt (free it
 * with vimg_sector_cipher_free). QEMU's texts for an unusable passphrase.
 */
int vimg_aes_legacy_new(struct vimg_sector_cipher **out, const char *pass, size_t pass_len,
                        struct vimg_error *err);

#endif
