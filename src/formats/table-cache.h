/*
 * A small write-through cache of table chunks, for the drivers that walk
 * on-disk tables one 8-byte entry at a time (qcow, qed): 4 KiB pieces of a
 * table, keyed by file offset and cut at the table's end, so that cached
 * bytes never cover anything but the table. Not thread-safe: callers hold
 * the lock that protects their tables.
 */
#ifndef VIMG_FORMATS_TABLE_CACHE_H
#define VIMG_FORMATS_TABLE_CACHE_H

#include <stdbool.h>
#include <stdint.h>

#include "core/driver.h"

#define VIMG_TABLE_CACHE_CHUNK      4096u
#define VIMG_TABLE_CACHE_N_CHUNKS   64u

struct vimg_table_cache {
    struct vimg_node *file;
    uint8_t *data;                          /* N_CHUNKS chunks of CHUNK bytes */
    uint64_t offset[VIMG_TABLE_CACHE_N_CHUNKS];
    uint64_t last_use[VIMG_TABLE_CACHE_N_CHUNKS];   /* 0: slot empty */
    uint64_t tick;
};

int vimg_table_cache_init(struct vimg_table_cache *c, struct vimg_node *file,
                          struct vimg_error *err);
void vimg_table_cache_free(struct vimg_table_cache *c);
/* The 8 raw bytes of entry index of the table at table (table_bytes long). */
int vimg_table_cache_read(struct vimg_table_cache *c, uint64_t table, uint64_t table_bytes,
                          uint64_t index, uint8_t out[8], struct vimg_error *err);
/* Writes the entry to the file, and to the cached chunk holding it if any. */
int vimg_table_cache_write(struct vimg_table_cache *c, uint64_t table, uint64_t index,
                           const uint8_t in[8], struct vimg_error *err);
/* Forgets chunks that overlap [offset, +bytes): the driver wrote there directly. */
void vimg_table_cache_drop(struct vimg_table_cache *c, uint64_t offset, uint64_t bytes);

#endif
