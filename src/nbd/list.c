/*
 * The listing client behind vimg-nbd -L: NBD_OPT_LIST, then NBD_OPT_INFO and
 * NBD_OPT_LIST_META_CONTEXT for each export (doc/proto.md "Option types"),
 * through libnbd's option mode. Without libnbd the call fails with ENOTSUP.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "nbd/internal.h"

#ifdef VIMG_HAVE_LIBNBD
#include <libnbd.h>

struct nbd_list_acc {
    struct vimg_nbd_export_info *items;
    unsigned n;
    bool is_oom;
};

static int
nbd_list_export(void *user_data, const char *name, const char *description)
{
    struct nbd_list_acc *acc = user_data;
    struct vimg_nbd_export_info *items;

    if (acc->is_oom || acc->n >= 4096)
        return 0;
    items = realloc(acc->items, (acc->n + 1) * sizeof(*items));
    if (!items) {
        acc->is_oom = true;
        return 0;
    }
    acc->items = items;
    memset(&items[acc->n], 0, sizeof(items[acc->n]));
    items[acc->n].name = strdup(name);
    items[acc->n].description = description[0] ? strdup(description) : NULL;
    acc->n++;
    return 0;
}

static int
nbd_list_context(void *user_data, const char *name)
{
    struct vimg_nbd_export_info *info = user_data;
    char **c;

    if (info->n_contexts >= 256)
        return 0;
    c = realloc(info->contexts, (info->n_contexts + 1) * sizeof(*c));
    if (!c)
        return 0;
    info->contexts = c;
    if ((c[info->n_contexts] = strdup(name)))
        info->n_contexts++;
    return 0;
}

/* The transmission flags, rebuilt from what libnbd reports of them. */
static uint16_t
nbd_list_flags(struct nbd_handle *h)
{
    uint16_t flags = NBD_FLAG_HAS_FLAGS;

    flags |= nbd_is_read_only(h) == 1 ? NBD_FLAG_READ_ONLY : 0;
    flags |= nbd_can_flush(h) == 1 ? NBD_FLAG_SEND_FLUSH : 0;
    flags |= nbd_can_fua(h) == 1 ? NBD_FLAG_SEND_FUA : 0;
    flags |= nbd_is_rotational(h) == 1 ? 0x0010u : 0;
    flags |= nbd_can_trim(h) == 1 ? NBD_FLAG_SEND_TRIM : 0;
    flags |= nbd_can_zero(h) == 1 ? NBD_FLAG_SEND_WRITE_ZEROES : 0;
    flags |= nbd_can_df(h) == 1 ? NBD_FLAG_SEND_DF : 0;
    flags |= nbd_can_multi_conn(h) == 1 ? 0x0100u : 0;
    flags |= nbd_can_cache(h) == 1 ? NBD_FLAG_SEND_CACHE : 0;
    flags |= nbd_can_fast_zero(h) == 1 ? NBD_FLAG_SEND_FAST_ZERO : 0;
    return flags;
}

static int
nbd_list_info(struct nbd_handle *h, struct vimg_nbd_export_info *info, struct vimg_error *err)
{
    nbd_context_callback cb = { .callback = nbd_list_context, .user_data = info };
    int64_t size;
    char *desc;

    if (!info->name)
        return vimg_error_set(err, ENOMEM, "Out of memory");
    if (nbd_set_export_name(h, info->name) < 0 || nbd_opt_info(h) < 0 ||
        (size = nbd_get_size(h)) < 0)
        return vimg_error_set(err, nbd_get_errno() ? nbd_get_errno() : EIO, "%s",
                              nbd_get_error());
    info->size = (uint64_t)size;
    info->flags = nbd_list_flags(h);
    info->min_block = (uint32_t)(nbd_get_block_size(h, LIBNBD_SIZE_MINIMUM) > 0 ?
                                 nbd_get_block_size(h, LIBNBD_SIZE_MINIMUM) : 0);
    info->opt_block = (uint32_t)(nbd_get_block_size(h, LIBNBD_SIZE_PREFERRED) > 0 ?
                                 nbd_get_block_size(h, LIBNBD_SIZE_PREFERRED) : 0);
    info->max_block = (uint32_t)(nbd_get_block_size(h, LIBNBD_SIZE_MAXIMUM) > 0 ?
                                 nbd_get_block_size(h, LIBNBD_SIZE_MAXIMUM) : 0);
    if (!info->description && (desc = nbd_get_export_description(h)))
        info->description = desc;
    /* A server without meta contexts simply lists none. */
    nbd_opt_list_meta_context(h, cb);
    return 0;
}

static int
nbd_list_connect(struct nbd_handle *h, const char *host, const char *port, const char *path,
                 struct vimg_error *err)
{
    int ret;

    if (nbd_set_opt_mode(h, true) < 0 || nbd_set_full_info(h, true) < 0)
        return vimg_error_set(err, EIO, "%s", nbd_get_error());
    ret = path ? nbd_connect_unix(h, path) : nbd_connect_tcp(h, host, port);
    if (ret < 0) {
        int e = nbd_get_errno() ? nbd_get_errno() : EIO;
        if (path)
            return vimg_error_set(err, e, "Failed to connect to '%s': %s", path, strerror(e));
        return vimg_error_set(err, e, "Failed to connect to '%s:%s': %s", host, port,
                              strerror(e));
    }
    return 0;
}

int
vimg_nbd_list(const char *host, const char *port, const char *path,
              struct vimg_nbd_export_info **out, unsigned *n_out, struct vimg_error *err)
{
    struct nbd_handle *h = nbd_create();
    struct nbd_list_acc acc = { 0 };
    nbd_list_callback cb = { .callback = nbd_list_export, .user_data = &acc };
    int ret;

    if (!h)
        return vimg_error_set(err, ENOMEM, "%s", nbd_get_error());
    ret = nbd_list_connect(h, host ? host : "localhost", port ? port : "10809", path, err);
    if (ret == 0 && nbd_opt_list(h, cb) < 0)
        ret = vimg_error_set(err, nbd_get_errno() ? nbd_get_errno() : EIO, "%s",
                             nbd_get_error());
    if (ret == 0 && acc.is_oom)
        ret = vimg_error_set(err, ENOMEM, "Out of memory");
    for (unsigned i = 0; ret == 0 && i < acc.n; i++)
        ret = nbd_list_info(h, &acc.items[i], err);
    if (nbd_aio_is_negotiating(h) == 1)
        nbd_opt_abort(h);
    nbd_close(h);
    if (ret < 0) {
        vimg_nbd_list_free(acc.items, acc.n);
        return ret;
    }
    *out = acc.items;
    *n_out = acc.n;
    return 0;
}

#else

int
vimg_nbd_list(const char *host, const char *port, const char *path,
              struct vimg_nbd_export_info **out, unsigned *n_out, struct vimg_error *err)
{
    (void)host;
    (void)port;
    (void)path;
    *out = NULL;
    *n_out = 0;
    return vimg_error_set(err, ENOTSUP, "Listing exports needs libnbd, which this vimg was "
                          "built without");
}

#endif

void
vimg_nbd_list_free(struct vimg_nbd_export_info *list, unsigned n)
{
    for (unsigned i = 0; list && i < n; i++) {
        free(list[i].name);
        free(list[i].description);
        for (unsigned k = 0; k < list[i].n_contexts; k++)
            free(list[i].contexts[k]);
        free(list[i].contexts);
    }
    free(list);
}
