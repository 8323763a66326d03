/*
 * qcow2 metadata cache: a few cluster-sized tables (L2 tables, refcount
 * blocks) kept in memory and written back on flush or eviction. Write-back
 * order keeps a crash harmless: refcount blocks reach the disk (and a
 * flush) before the L2 tables that point at the clusters they count, so a
 * crash leaks clusters at worst instead of handing one out twice.
 * Everything here runs under the state's lock.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "formats/qcow2/qcow2.h"

int
qcow2_cache_init(struct qcow2_cache *c, unsigned n_entries, uint32_t table_size)
{
    memset(c, 0, sizeof(*c));
    c->entries = calloc(n_entries, sizeof(*c->entries));
    if (!c->entries)
        return -ENOMEM;
    c->n_entries = n_entries;
    for (unsigned i = 0; i < n_entries; i++) {
        if (posix_memalign((void **)&c->entries[i].table, 4096, table_size) != 0) {
            c->entries[i].table = NULL;
            qcow2_cache_free(c);
            return -ENOMEM;
        }
    }
    return 0;
}

void
qcow2_cache_free(struct qcow2_cache *c)
{
    if (!c->entries)
        return;
    for (unsigned i = 0; i < c->n_entries; i++)
        free(c->entries[i].table);
    free(c->entries);
    c->entries = NULL;
}

static bool
qcow2_cache_is_l2(const struct qcow2_state *s, const struct qcow2_cache *c)
{
    return c == &s->l2_cache;
}

static int
qcow2_cache_write_entry(struct vimg_node *node, struct qcow2_cache *c,
                        struct qcow2_cache_entry *e, struct vimg_error *err)
{
    struct qcow2_state *s = node->state;
    int ret;

    if (!e->is_dirty)
        return 0;
    /* An L2 table may only reach the disk after the refcounts it relies on. */
    if (qcow2_cache_is_l2(s, c)) {
        if ((ret = qcow2_cache_write_dirty(node, &s->rb_cache, err)) < 0)
            return ret;
        if (s->rb_cache.needs_barrier) {
            if ((ret = vimg_node_flush(node->file, err)) < 0)
                return ret;
            s->rb_cache.needs_barrier = false;
        }
    }
    ret = qcow2_pwrite_file(node->file, e->offset, e->table, s->cluster_size, err);
    if (ret < 0)
        return ret;
    e->is_dirty = false;
    c->needs_barrier = true;
    return 0;
}

int
qcow2_cache_write_dirty(struct vimg_node *node, struct qcow2_cache *c, struct vimg_error *err)
{
    for (unsigned i = 0; i < c->n_entries; i++) {
        int ret = qcow2_cache_write_entry(node, c, &c->entries[i], err);
        if (ret < 0)
            return ret;
    }
    return 0;
}

int
qcow2_cache_get(struct vimg_node *node, struct qcow2_cache *c, uint64_t offset, bool is_new,
                uint8_t **table, struct vimg_error *err)
{
    struct qcow2_state *s = node->state;
    struct qcow2_cache_entry *victim = NULL;
    int ret;

    for (unsigned i = 0; i < c->n_entries; i++) {
        struct qcow2_cache_entry *e = &c->entries[i];
        if (e->offset == offset) {
            e->last_use = ++c->use_counter;
            if (is_new)
                memset(e->table, 0, s->cluster_size);
            *table = e->table;
            return 0;
        }
        if (!victim || e->offset == 0 ||
            (victim->offset != 0 && e->last_use < victim->last_use))
            victim = e;
    }
    if (victim->offset && (ret = qcow2_cache_write_entry(node, c, victim, err)) < 0)
        return ret;
    victim->offset = 0;
    victim->is_dirty = false;
    if (is_new) {
        memset(victim->table, 0, s->cluster_size);
    } else if ((ret = qcow2_read_meta(node->file, offset, victim->table, s->cluster_size,
                                      err)) < 0) {
        return ret;
    }
    victim->offset = offset;
    victim->last_use = ++c->use_counter;
    *table = victim->table;
    return 0;
}

void
qcow2_cache_mark_dirty(struct qcow2_cache *c, const uint8_t *table)
{
    for (unsigned i = 0; i < c->n_entries; i++) {
        if (c->entries[i].table == table) {
            c->entries[i].is_dirty = true;
            return;
        }
    }
}

/* Drops a table whose cluster was freed, without writing it. */
void
qcow2_cache_forget(struct qcow2_cache *c, uint64_t offset)
{
    for (unsigned i = 0; i < c->n_entries; i++) {
        if (c->entries[i].offset == offset) {
            c->entries[i].offset = 0;
            c->entries[i].is_dirty = false;
        }
    }
}

int
qcow2_flush_metadata(struct vimg_node *node, struct vimg_error *err)
{
    struct qcow2_state *s = node->state;
    int ret;

    if ((ret = qcow2_cache_write_dirty(node, &s->rb_cache, err)) < 0)
        return ret;
    return qcow2_cache_write_dirty(node, &s->l2_cache, err);
}
