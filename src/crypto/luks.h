/*
 * LUKS1 headers: decoding and checking, key slots, the anti-forensic
 * splitter, unlocking with a passphrase and creating a new header. The
 * header is read and written through callbacks, so that the LUKS format
 * (header at offset 0 of its file) and qcow2's encrypt.format=luks (header
 * in clusters of the image) share this code.
 */
#ifndef VIMG_CRYPTO_LUKS_H
#define VIMG_CRYPTO_LUKS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include <vimg/error.h>
#include <vimg/opts.h>

#include "crypto/cipher.h"

#define VIMG_LUKS_HEADER_SIZE 592u     /* the phdr with its 8 key slots */
#define VIMG_LUKS_N_SLOTS 8u
#define VIMG_LUKS_STRIPES 4000u

/* Reads or writes len bytes at offset from the start of the LUKS header. */
typedef int (*vimg_luks_read_fn)(void *opaque, uint64_t offset, void *buf, size_t len,
                                 struct vimg_error *err);
typedef int (*vimg_luks_write_fn)(void *opaque, uint64_t offset, const void *buf, size_t len,
                                  struct vimg_error *err);

struct vimg_luks;

/* True when buf starts with a LUKS version 1 header. */
bool vimg_luks_probe(const uint8_t *buf, size_t len);

/*
 * Reads and checks the header. With pass non-NULL, also unlocks a key slot
 * and keys the payload cipher; without, only what `info` shows is known.
 */
int vimg_luks_open(struct vimg_luks **out, vimg_luks_read_fn read_fn, void *opaque,
                   const char *pass, size_t pass_len, struct vimg_error *err);
void vimg_luks_free(struct vimg_luks *luks);

/* Where the encrypted payload starts, in bytes from the header. */
uint64_t vimg_luks_payload_offset(const struct vimg_luks *luks);
/* The payload cipher (sector 0 at the payload offset); NULL unless unlocked. */
struct vimg_sector_cipher *vimg_luks_cipher(const struct vimg_luks *luks);
/* QEMU's QCryptoBlockInfoLUKS ("data" of `info`'s format-specific). */
json_t *vimg_luks_info(const struct vimg_luks *luks);

struct vimg_luks_create_opts {
    enum vimg_cipher_alg cipher_alg;
    enum vimg_cipher_mode cipher_mode;
    enum vimg_ivgen_alg ivgen_alg;
    enum vimg_hash_alg ivgen_hash_alg;
    bool has_ivgen_hash_alg;            /* given, or implied by essiv */
    enum vimg_hash_alg hash_alg;
    uint64_t iter_time_ms;
};

/*
 * Reads cipher-alg, cipher-mode, ivgen-alg, ivgen-hash-alg, hash-alg and
 * iter-time, each under prefix ("" or "encrypt."), with QEMU's defaults.
 */
int vimg_luks_parse_create_opts(struct vimg_opts *opts, const char *prefix,
                                struct vimg_luks_create_opts *out, struct vimg_error *err);
/* Checks that the options make a header we can write, before anything is created. */
int vimg_luks_check_create_opts(const struct vimg_luks_create_opts *o,
                                struct vimg_error *err);
/* Bytes a new header with its key slots takes: where the payload will start. */
uint64_t vimg_luks_header_len(const struct vimg_luks_create_opts *o);
/*
 * Makes a new master key and writes a header with key slot 0 opened by pass.
 * The LUKS object returned is unlocked.
 */
int vimg_luks_create(struct vimg_luks **out, const struct vimg_luks_create_opts *o,
                     const char *pass, size_t pass_len, vimg_luks_write_fn write_fn,
                     void *opaque, struct vimg_error *err);

/*
 * Adds or erases key slots of an unlocked volume as qemu-img 7.2's amend
 * does: opts holds state (active/inactive), keyslot, new-secret, old-secret
 * and iter-time (messages name numbers with prefix, "" or "encrypt.");
 * is_forced allows erasing the last slot and overwriting an active one.
 */
int vimg_luks_amend(struct vimg_luks *luks, struct vimg_opts *opts, const char *prefix,
                    bool is_forced, vimg_luks_read_fn read_fn, vimg_luks_write_fn write_fn,
                    void *opaque, struct vimg_error *err);

#endif
