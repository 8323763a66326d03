/*
 * Sector encryption spread over worker threads: a large buffer is cut into
 * pieces that workers encrypt or decrypt at the same time. Callers on many
 * threads may share one pool; each waits for its own pieces only.
 */
#ifndef VIMG_CRYPTO_SECTOR_POOL_H
#define VIMG_CRYPTO_SECTOR_POOL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <vimg/error.h>

#include "crypto/cipher.h"

struct vimg_sector_pool;

/* Workers start on first use; NULL only when out of memory. */
struct vimg_sector_pool *vimg_sector_pool_new(void);
void vimg_sector_pool_free(struct vimg_sector_pool *p);

/*
 * vimg_sector_encrypt/decrypt of buf (len a multiple of the sector size,
 * sector numbering its first sector), on the workers when len is large
 * enough to gain from it; p may be NULL (this thread only).
 */
int vimg_sector_pool_crypt(struct vimg_sector_pool *p, struct vimg_sector_cipher *c,
                           bool is_enc, uint64_t sector, uint8_t *buf, size_t len,
                           struct vimg_error *err);

#endif
