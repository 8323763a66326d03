/*
 * blkdebug: the fault-injecting filter tests use to reach error paths. It
 * takes QEMU's blkdebug options for the cases tests need, so that one json:
 * filename fails the same way in qemu-img and in vimg:
 *   {"driver": "blkdebug", "image": {...},
 *    "inject-error": [{"event": "none", "iotype": "read", "errno": 5,
 *                      "sector": -1, "once": false, "immediately": false}]}
 * Leaves out: config files, states and set-state rules, events other than
 * "none" (vimg has no debug event points), "align" and friends.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/driver.h"

#define BLKDEBUG_MAX_RULES 16

enum blkdebug_iotype {
    IOTYPE_READ = 1u << 0,
    IOTYPE_WRITE = 1u << 1,
    IOTYPE_WRITE_ZEROES = 1u << 2,
    IOTYPE_DISCARD = 1u << 3,
    IOTYPE_FLUSH = 1u << 4,
    IOTYPE_BLOCK_STATUS = 1u << 5,
};

struct blkdebug_rule {
    unsigned iotypes;
    int errnum;
    int64_t sector;             /* -1: any request */
    bool is_once;
    bool has_fired;
};

struct blkdebug_state {
    pthread_mutex_t lock;       /* protects rules[].has_fired */
    struct blkdebug_rule rules[BLKDEBUG_MAX_RULES];
    int n_rules;
};

static const char *const iotype_names[] = {
    "read", "write", "write-zeroes", "discard", "flush", "block-status", NULL,
};

static int
blkdebug_parse_rule(struct vimg_opts *r, struct blkdebug_rule *rule, struct vimg_error *err)
{
    const char *event = vimg_opts_get(r, "event");
    uint64_t errnum, sector_u;
    const char *sector;
    int iotype, ret;
    bool b;

    if (!event)
        return vimg_error_set(err, EINVAL, "Parameter 'event' is missing");
    if (strcmp(event, "none") != 0)
        return vimg_error_set(err, ENOTSUP, "blkdebug event '%s' is not supported by vimg "
                              "(only \"none\")", event);
    rule->iotypes = IOTYPE_READ | IOTYPE_WRITE | IOTYPE_WRITE_ZEROES | IOTYPE_DISCARD |
                    IOTYPE_FLUSH;
    if (vimg_opts_has(r, "iotype")) {
        if ((ret = vimg_opts_get_enum(r, "iotype", iotype_names, 0, &iotype, err)) < 0)
            return ret;
        rule->iotypes = 1u << iotype;
    }
    if ((ret = vimg_opts_get_number(r, "errno", EIO, &errnum, err)) < 0)
        return ret;
    rule->errnum = errnum > 0 && errnum < 4096 ? (int)errnum : EIO;
    rule->sector = -1;
    sector = vimg_opts_get(r, "sector");
    if (sector && strcmp(sector, "-1") != 0) {
        if (vimg_parse_size(sector, &sector_u) < 0 || sector_u > INT64_MAX / 512)
            return vimg_error_set(err, EINVAL, "Parameter 'sector' expects a number");
        rule->sector = (int64_t)sector_u;
    }
    if ((ret = vimg_opts_get_bool(r, "once", false, &rule->is_once, err)) < 0)
        return ret;
    if ((ret = vimg_opts_get_bool(r, "immediately", false, &b, err)) < 0)
        return ret;
    vimg_opts_get(r, "state");
    return 0;
}

static int
blkdebug_open(struct vimg_node *node, struct vimg_opts *opts, unsigned flags,
              struct vimg_error *err)
{
    struct blkdebug_state *s = node->state;
    struct vimg_opts *rules = vimg_opts_get_dict(opts, "inject-error");
    struct vimg_opts *image = vimg_opts_get_dict(opts, "image");
    const char *image_name = vimg_opts_get(opts, "image");
    int ret;

    pthread_mutex_init(&s->lock, NULL);
    for (size_t i = 0; rules && i < vimg_opts_count(rules); i++) {
        struct vimg_opts *r = vimg_opts_dict_at(rules, i);
        if (!r || s->n_rules == BLKDEBUG_MAX_RULES)
            return vimg_error_set(err, EINVAL, "Invalid parameter 'inject-error'");
        if ((ret = blkdebug_parse_rule(r, &s->rules[s->n_rules++], err)) < 0)
            return ret;
        vimg_opts_get_dict(rules, vimg_opts_key_at(rules, i));
    }
    if (!image && !image_name)
        return vimg_error_set(err, EINVAL, "A block device must be specified for \"image\"");
    if (image) {
        ret = vimg_open_child(&node->file, node, "image", NULL, NULL, image,
                              flags | VIMG_OPEN_PROTOCOL, err);
    } else {
        ret = vimg_open_child(&node->file, node, "image", image_name, NULL, NULL,
                              flags | VIMG_OPEN_PROTOCOL, err);
    }
    if (ret < 0)
        return ret;
    free(node->filename);
    node->filename = strdup(node->file->filename);
    node->request_alignment = node->file->request_alignment;
    node->mem_alignment = node->file->mem_alignment;
    return node->filename ? 0 : vimg_error_set(err, ENOMEM, "Out of memory");
}

static void
blkdebug_close(struct vimg_node *node)
{
    struct blkdebug_state *s = node->state;

    pthread_mutex_destroy(&s->lock);
}

/* Returns -errno when a rule fires for this request, 0 otherwise. */
static int
blkdebug_check(struct vimg_node *node, unsigned iotype, uint64_t offset, uint64_t bytes,
               struct vimg_error *err)
{
    struct blkdebug_state *s = node->state;
    int ret = 0;

    pthread_mutex_lock(&s->lock);
    for (int i = 0; i < s->n_rules && ret == 0; i++) {
        struct blkdebug_rule *r = &s->rules[i];
        uint64_t at;
        if (!(r->iotypes & iotype) || (r->is_once && r->has_fired))
            continue;
        at = (uint64_t)r->sector * 512;
        if (r->sector >= 0 && (at < offset || at >= offset + (bytes ? bytes : 1)))
            continue;
        r->has_fired = true;
        ret = vimg_error_set(err, r->errnum, "%s", strerror(r->errnum));
    }
    pthread_mutex_unlock(&s->lock);
    return ret;
}

static int
blkdebug_preadv(struct vimg_node *node, uint64_t offset, uint64_t bytes,
                const struct iovec *iov, int n_iov, unsigned flags, struct vimg_error *err)
{
    int ret = blkdebug_check(node, IOTYPE_READ, offset, bytes, err);

    return ret < 0 ? ret : vimg_node_preadv(node->file, offset, bytes, iov, n_iov, flags, err);
}

static int
blkdebug_pwritev(struct vimg_node *node, uint64_t offset, uint64_t bytes,
                 const struct iovec *iov, int n_iov, unsigned flags, struct vimg_error *err)
{
    int ret = blkdebug_check(node, IOTYPE_WRITE, offset, bytes, err);

    return ret < 0 ? ret : vimg_node_pwritev(node->file, offset, bytes, iov, n_iov, flags, err);
}

static int
blkdebug_pwrite_zeroes(struct vimg_node *node, uint64_t offset, uint64_t bytes, unsigned flags,
                       struct vimg_error *err)
{
    int ret = blkdebug_check(node, IOTYPE_WRITE_ZEROES, offset, bytes, err);

    return ret < 0 ? ret : vimg_node_pwrite_zeroes(node->file, offset, bytes, flags, err);
}

static int
blkdebug_discard(struct vimg_node *node, uint64_t offset, uint64_t bytes,
                 struct vimg_error *err)
{
    int ret = blkdebug_check(node, IOTYPE_DISCARD, offset, bytes, err);

    return ret < 0 ? ret : vimg_node_discard(node->file, offset, bytes, err);
}

static int
blkdebug_flush(struct vimg_node *node, struct vimg_error *err)
{
    int ret = blkdebug_check(node, IOTYPE_FLUSH, 0, 0, err);

    return ret < 0 ? ret : vimg_node_flush(node->file, err);
}

static int
blkdebug_block_status(struct vimg_node *node, uint64_t offset, uint64_t bytes,
                      struct vimg_block_status *bs, struct vimg_error *err)
{
    int ret = blkdebug_check(node, IOTYPE_BLOCK_STATUS, offset, bytes, err);

    if (ret < 0)
        return ret;
    bs->flags = VIMG_BS_RAW | VIMG_BS_OFFSET_VALID;
    bs->offset = offset;
    bs->bytes = bytes;
    bs->file = node->file;
    return 0;
}

static int
blkdebug_truncate(struct vimg_node *node, uint64_t size, bool is_exact, int prealloc,
                  struct vimg_error *err)
{
    return vimg_node_truncate(node->file, size, is_exact, vimg_prealloc_name(prealloc), err);
}

static const char *const blkdebug_protocols[] = { "blkdebug", NULL };

const struct vimg_driver vimg_blkdebug_driver = {
    .name = "blkdebug",
    .kind = VIMG_DRIVER_PROTOCOL,
    .state_size = sizeof(struct blkdebug_state),
    .protocols = blkdebug_protocols,
    .is_filter = true,
    .open = blkdebug_open,
    .close = blkdebug_close,
    .preadv = blkdebug_preadv,
    .pwritev = blkdebug_pwritev,
    .pwrite_zeroes = blkdebug_pwrite_zeroes,
    .discard = blkdebug_discard,
    .flush = blkdebug_flush,
    .block_status = blkdebug_block_status,
    .truncate = blkdebug_truncate,
};
