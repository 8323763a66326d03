/*
 * The NBD server's life cycle: the export it serves, its worker pool, and
 * one connection from handshake to the end of transmission. Accepting
 * connections, limits on their number and signals are the caller's
 * (tools/vimg-nbd).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <vimg/image.h>

#include "nbd/internal.h"

static uint16_t
nbd_export_flags(const struct vimg_nbd_export *exp)
{
    /* What qemu-nbd advertises, so that clients see the same export. */
    uint16_t flags = NBD_FLAG_HAS_FLAGS | NBD_FLAG_SEND_FLUSH | NBD_FLAG_SEND_FUA |
                     NBD_FLAG_SEND_CACHE;

    if (exp->is_read_only)
        return flags | NBD_FLAG_READ_ONLY;
    return flags | NBD_FLAG_SEND_TRIM | NBD_FLAG_SEND_WRITE_ZEROES | NBD_FLAG_SEND_FAST_ZERO;
}

static bool
nbd_bitmap_is_enabled(struct vimg_nbd_server *server, const char *name)
{
    struct vimg_bitmap_info *list;
    bool is_enabled = false;
    size_t n;

    if (vimg_image_bitmap_list(server->exp.node, &list, &n, NULL) < 0)
        return false;
    for (size_t i = 0; i < n; i++)
        if (strcmp(list[i].name, name) == 0)
            is_enabled = list[i].is_enabled;
    vimg_bitmap_list_free(list, n);
    return is_enabled;
}

void
nbd_bitmap_mark(struct vimg_nbd_server *server, uint64_t offset, uint64_t bytes)
{
    uint64_t gran = server->bitmap_granularity;

    if (!server->is_bitmap_live || bytes == 0)
        return;
    pthread_mutex_lock(&server->bitmap_lock);
    for (uint64_t i = offset / gran; i <= (offset + bytes - 1) / gran &&
                                     i < server->bitmap_n_bits; i++)
        server->bitmap_bits[i / 8] |= (uint8_t)(1u << (i % 8));
    pthread_mutex_unlock(&server->bitmap_lock);
}

/*
 * -B: the bitmap is read once into memory. A disabled one, or any on a
 * read-only export, cannot change under the export; an enabled one on a
 * writable export records the export's writes there (not on disk).
 */
static int
nbd_load_bitmap(struct vimg_nbd_server *server, const char *name, uint64_t image_len,
                struct vimg_error *err)
{
    int ret;

    if (strlen(name) > NBD_MAX_STRING - strlen(NBD_CONTEXT_BITMAP_PREFIX))
        return vimg_error_set(err, EINVAL, "Bitmap name '%s' too long", name);
    ret = vimg_image_bitmap_read(server->exp.node, name, &server->bitmap_bits,
                                 &server->bitmap_granularity, err);
    if (ret == -ENOENT)
        return vimg_error_set(err, ENOENT, "Bitmap '%s' is not found", name);
    if (ret < 0)
        return ret;
    if (server->bitmap_granularity == 0)
        return vimg_error_set(err, EBADMSG, "Bitmap '%s' has a zero granularity", name);
    server->bitmap_n_bits = (image_len + server->bitmap_granularity - 1) /
                            server->bitmap_granularity;
    server->is_bitmap_live = !server->exp.is_read_only && nbd_bitmap_is_enabled(server, name);
    if (asprintf(&server->bitmap_context, "%s%s", NBD_CONTEXT_BITMAP_PREFIX, name) < 0) {
        server->bitmap_context = NULL;
        return vimg_error_set(err, ENOMEM, "Out of memory");
    }
    return 0;
}

struct vimg_nbd_server *
vimg_nbd_server_new(const struct vimg_nbd_export *exp, unsigned n_threads,
                    vimg_nbd_log_fn log, struct vimg_error *err)
{
    struct vimg_nbd_server *server = calloc(1, sizeof(*server));
    int64_t len;

    if (!server) {
        vimg_error_set(err, ENOMEM, "Out of memory");
        return NULL;
    }
    server->exp = *exp;
    pthread_mutex_init(&server->bitmap_lock, NULL);
    server->log = log;
    server->exp.name = strdup(exp->name ? exp->name : "");
    server->exp.description = exp->description ? strdup(exp->description) : NULL;
    if (!server->exp.name || (exp->description && !server->exp.description)) {
        vimg_error_set(err, ENOMEM, "Out of memory");
        goto fail;
    }
    if (strlen(server->exp.name) > NBD_MAX_STRING) {
        vimg_error_set(err, EINVAL, "export name '%s' too long", server->exp.name);
        goto fail;
    }
    if (server->exp.description && strlen(server->exp.description) > NBD_MAX_STRING) {
        vimg_error_set(err, EINVAL, "description '%s' too long", server->exp.description);
        goto fail;
    }
    if ((len = vimg_node_length(exp->node, err)) < 0)
        goto fail;
    if (exp->offset > (uint64_t)len) {
        vimg_error_set(err, EINVAL, "Offset (%llu) is beyond the end of the image (%lld)",
                       (unsigned long long)exp->offset, (long long)len);
        goto fail;
    }
    server->size = (uint64_t)len - exp->offset;
    server->tx_flags = nbd_export_flags(exp);
    server->exp.tls_creds = NULL;
    server->exp.tls_authz = NULL;
    server->exp.bitmap = NULL;
    if (exp->bitmap && nbd_load_bitmap(server, exp->bitmap, (uint64_t)len, err) < 0)
        goto fail;
    if (exp->tls_creds && nbd_tls_new(exp->tls_creds, exp->tls_authz, &server->tls, err) < 0)
        goto fail;
    /* Room for every request in flight on a few connections: the reader never waits. */
    if (!(server->pool = vimg_pool_new(n_threads ? n_threads : 1, 4 * NBD_MAX_INFLIGHT, err)))
        goto fail;
    return server;
fail:
    vimg_nbd_server_free(server);
    return NULL;
}

void
vimg_nbd_server_free(struct vimg_nbd_server *server)
{
    if (!server)
        return;
    if (server->pool)
        vimg_pool_free(server->pool);
    nbd_tls_free(server->tls);
    free(server->bitmap_context);
    pthread_mutex_destroy(&server->bitmap_lock);
    free(server->bitmap_bits);
    free((char *)server->exp.name);
    free((char *)server->exp.description);
    free(server);
}

/* Bounds the time a client may spend negotiating (--handshake-limit). */
static void
nbd_set_timeout(int fd, unsigned seconds)
{
    struct timeval tv = { .tv_sec = seconds };

    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
}

int
vimg_nbd_server_serve(struct vimg_nbd_server *server, int fd, struct vimg_error *err)
{
    struct nbd_conn conn = { .server = server, .fd = fd };
    int ret;

    pthread_mutex_init(&conn.send_lock, NULL);
    pthread_mutex_init(&conn.lock, NULL);
    pthread_cond_init(&conn.cond, NULL);
    if (server->exp.handshake_limit)
        nbd_set_timeout(fd, server->exp.handshake_limit);
    ret = nbd_handshake(&conn, err);
    if (ret == NBD_HANDSHAKE_TRANSMIT) {
        if (server->exp.handshake_limit)
            nbd_set_timeout(fd, 0);
        ret = nbd_transmission(&conn, err);
    } else if (ret == NBD_HANDSHAKE_END) {
        ret = 0;
    }
    nbd_tls_end(&conn);
    pthread_cond_destroy(&conn.cond);
    pthread_mutex_destroy(&conn.lock);
    pthread_mutex_destroy(&conn.send_lock);
    close(fd);
    return ret;
}
