/*
 * The listing client behind vimg-nbd -L: NBD_OPT_LIST, then NBD_OPT_INFO and
 * NBD_OPT_LIST_META_CONTEXT for each export (doc/proto.md "Option types"),
 * through libnbd's option mode. Without libnbd the call fails with ENOTSUP.
 *
 * With TLS credentials (-L --tls-creds): x509 as the nbd driver does it
 * (libnbd-client.c), the certificate checked against --tls-hostname, else the
 * TCP host, else (unix socket) no name, which fails as in qemu-nbd; PSK
 * through libnbd's nbd_set_tls_psk_file.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <vimg/object.h>

#include "config.h"
#include "core/driver.h"
#include "nbd/internal.h"

#ifdef VIMG_HAVE_LIBNBD
#include <libnbd.h>

#include "nbd/libnbd-client.h"

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
nbd_list_unix_fd(const char *path, struct vimg_error *err)
{
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    int fd, e;

    if (strlen(path) >= sizeof(sa.sun_path))
        return vimg_error_set(err, ENAMETOOLONG, "Failed to connect to '%s': %s", path,
                              strerror(ENAMETOOLONG));
    memcpy(sa.sun_path, path, strlen(path) + 1);
    if ((fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0)) < 0 ||
        connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
        e = errno;
        if (fd >= 0)
            close(fd);
        return vimg_error_set(err, e, "Failed to connect to '%s': %s", path, strerror(e));
    }
    return fd;
}

/* The connection failed during the handshake: qemu-nbd's words where we know them. */
static int
nbd_list_fail(const struct vimg_tls_creds *tls, const char *server_msg, bool is_list,
              struct vimg_error *err)
{
    int e = nbd_get_errno() ? nbd_get_errno() : EIO;
    const char *msg = nbd_get_error() ? nbd_get_error() : "";

    if (tls && !is_list && (strstr(msg, "server refused TLS") || server_msg[0]))
        return vimg_error_set(err, e, "Denied by server for option 5 (starttls)%s%s",
                              server_msg[0] ? "\nserver reported: " : "", server_msg);
    if (tls && tls->type == VIMG_TLS_CREDS_PSK && strstr(msg, "was not found in PSK file"))
        return vimg_error_set(err, e, "Username %s not found in PSK file %s/keys.psk",
                              tls->username ? tls->username : "qemu", tls->dir);
    if (!tls && is_list && e == ENOTSUP && server_msg[0] &&
        strstr(server_msg, "not permitted before TLS"))
        return vimg_error_set(err, e, "TLS negotiation required before option 3 (list)\n"
                              "Did you forget a valid tls-creds?\nserver reported: %s",
                              server_msg);
    return vimg_error_set(err, e, "%s", msg);
}

/* 0, 1 when libnbd failed in the handshake (its error set), or -errno with err set. */
static int
nbd_list_connect(struct nbd_handle *h, const char *host, const char *port, const char *path,
                 const struct vimg_tls_creds *tls, const char *tls_hostname,
                 struct vimg_nbd_relay **relay, struct vimg_error *err)
{
    int ret, fd;

    if (nbd_set_opt_mode(h, true) < 0 || nbd_set_full_info(h, true) < 0)
        return vimg_error_set(err, EIO, "%s", nbd_get_error());
    fd = path ? nbd_list_unix_fd(path, err) : vimg_tcp_connect(host, port, err);
    if (fd < 0)
        return fd;
    ret = vimg_nbd_client_connect(h, fd, tls, tls_hostname ? tls_hostname : path ? NULL : host,
                                  relay, err);
    return ret;
}

int
vimg_nbd_list_tls(const char *host, const char *port, const char *path, const char *tls_creds,
                  const char *tls_hostname, struct vimg_nbd_export_info **out,
                  unsigned *n_out, struct vimg_error *err)
{
    struct nbd_handle *h = nbd_create();
    struct nbd_list_acc acc = { 0 };
    nbd_list_callback cb = { .callback = nbd_list_export, .user_data = &acc };
    char server_msg[VIMG_ERROR_MSG_MAX] = "";
    nbd_debug_callback dcb = { .callback = vimg_nbd_client_debug_capture,
                               .user_data = server_msg };
    struct vimg_tls_creds creds;
    struct vimg_nbd_relay *relay = NULL;
    bool has_tls = false;
    int ret = 0;

    if (!h)
        return vimg_error_set(err, ENOMEM, "%s", nbd_get_error());
    if (tls_creds) {
        if ((ret = vimg_tls_creds_lookup(tls_creds, &creds, err)) < 0)
            goto out;
        has_tls = true;
    }
    if (nbd_set_debug_callback(h, dcb) < 0 || nbd_set_debug(h, true) < 0) {
        ret = vimg_error_set(err, EIO, "%s", nbd_get_error());
        goto out;
    }
    host = host ? host : "localhost";
    port = port ? port : "10809";
    ret = nbd_list_connect(h, host, port, path, has_tls ? &creds : NULL, tls_hostname, &relay,
                           err);
    if (ret == 1)
        ret = nbd_list_fail(has_tls ? &creds : NULL, server_msg, false, err);
    if (ret == 0 && nbd_opt_list(h, cb) < 0)
        ret = nbd_list_fail(has_tls ? &creds : NULL, server_msg, true, err);
    if (ret == 0 && acc.is_oom)
        ret = vimg_error_set(err, ENOMEM, "Out of memory");
    for (unsigned i = 0; ret == 0 && i < acc.n; i++)
        ret = nbd_list_info(h, &acc.items[i], err);
    if (nbd_aio_is_negotiating(h) == 1)
        nbd_opt_abort(h);
out:
    nbd_set_debug(h, false);
    nbd_close(h);
    vimg_nbd_relay_free(relay);
    if (has_tls)
        vimg_tls_creds_release(&creds);
    if (ret < 0) {
        vimg_nbd_list_free(acc.items, acc.n);
        return ret;
    }
    *out = acc.items;
    *n_out = acc.n;
    return 0;
}

int
vimg_nbd_list(const char *host, const char *port, const char *path,
              struct vimg_nbd_export_info **out, unsigned *n_out, struct vimg_error *err)
{
    return vimg_nbd_list_tls(host, port, path, NULL, NULL, out, n_out, err);
}

#else

int
vimg_nbd_list_tls(const char *host, const char *port, const char *path, const char *tls_creds,
                  const char *tls_hostname, struct vimg_nbd_export_info **out,
                  unsigned *n_out, struct vimg_error *err)
{
    (void)tls_creds, (void)tls_hostname;
    return vimg_nbd_list(host, port, path, out, n_out, err);
}

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
