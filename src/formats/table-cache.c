/* The table chunk cache of table-cache.h. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "formats/table-cache.h"

int
vimg_table_cache_init(struct vimg_table_cache *c, struct vimg_node *file,
                      struct vimg_error *err)
{
    memset(c, 0, sizeof(*c));
    c->file = file;
    if (!(c->data = malloc((size_t)VIMG_TABLE_CACHE_CHUNK * VIMG_TABLE_CACHE_N_CHUNKS)))
        return vimg_error_set(err, ENOMEM, "Out of memory");
    return 0;
}

void
vimg_table_cache_free(struct vimg_table_cache *c)
{
    free(c->data);
    c->data = NULL;
}

static int
table_cache_find(const struct vimg_table_cache *c, uint64_t offset)
{
    for (unsigned i = 0; i < VIMG_TABLE_CACHE_N_CHUNKS; i++)
        if (c->last_use[i] && c->offset[i] == offset)
            return (int)i;
    return -1;
}

/* Loads the chunk at offset (bytes long, at most one chunk) into the least recently used slot. */
static int
table_cache_load(struct vimg_table_cache *c, uint64_t offset, uint64_t bytes,
                 struct vimg_error *err)
{
    unsigned victim = 0;
    int ret;

    for (unsigned i = 1; i < VIMG_TABLE_CACHE_N_CHUNKS; i++)
        if (c->last_use[i] < c->last_use[victim])
            victim = i;
    c->last_use[victim] = 0;
    ret = vimg_node_pread_padded(c->file, offset,
                                 c->data + (size_t)victim * VIMG_TABLE_CACHE_CHUNK, bytes, err);
    if (ret < 0)
        return ret;
    c->offset[victim] = offset;
    c->last_use[victim] = ++c->tick;
    return (int)victim;
}

int
vimg_table_cache_read(struct vimg_table_cache *c, uint64_t table, uint64_t table_bytes,
                      uint64_t index, uint8_t out[8], struct vimg_error *err)
{
    uint64_t pos = index * 8, start = pos / VIMG_TABLE_CACHE_CHUNK * VIMG_TABLE_CACHE_CHUNK;
    uint64_t bytes = table_bytes - start < VIMG_TABLE_CACHE_CHUNK ? table_bytes - start
                                                                  : VIMG_TABLE_CACHE_CHUNK;
    int slot;

    if (pos + 8 > table_bytes || table + start < table)
        return vimg_node_pread_padded(c->file, table + pos, out, 8, err);
    if ((slot = table_cache_find(c, table + start)) < 0 &&
        (slot = table_cache_load(c, table + start, bytes, err)) < 0)
        return slot;
    c->last_use[slot] = ++c->tick;
    memcpy(out, c->data + (size_t)slot * VIMG_TABLE_CACHE_CHUNK + (pos - start), 8);
    return 0;
}

int
vimg_table_cache_write(struct vimg_table_cache *c, uint64_t table, uint64_t index,
                       const uint8_t in[8], struct vimg_error *err)
{
    uint64_t at = table + index * 8;
    int ret;

    if ((ret = vimg_node_pwrite(c->file, at, in, 8, 0, err)) < 0) {
        vimg_table_cache_drop(c, at, 8);
        return ret;
    }
    for (unsigned i = 0; i < VIMG_TABLE_CACHE_N_CHUNKS; i++) {
        if (!c->last_use[i] || at + 8 <= c->offset[i] || at >= c->offset[i] +
            VIMG_TABLE_CACHE_CHUNK)
            continue;
        /* A chunk of another table that the entry straddles (tables overlap): forget it. */
        if (at < c->offset[i] || at - c->offset[i] > VIMG_TABLE_CACHE_CHUNK - 8)
            c->last_use[i] = 0;
        else
            memcpy(c->data + (size_t)i * VIMG_TABLE_CACHE_CHUNK + (at - c->offset[i]), in, 8);
    }
    return 0;
}

void
vimg_table_cache_drop(struct vimg_table_cache *c, uint64_t offset, uint64_t bytes)
{
    for (unsigned i = 0; i < VIMG_TABLE_CACHE_N_CHUNKS; i++)
        if (c->last_use[i] && c->offset[i] < offset + bytes &&
            offset < c->offset[i] + VIMG_TABLE_CACHE_CHUNK)
            c->last_use[i] = 0;
}
