/*
 * The NBD server's life cycle: the export it serves, its worker pool, and
 * one connection from handshake to the end of transmission. Accepting
 * connections, limits on their number and signals are the caller's
 * (tools/vimg-nbd).
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include "nbd/internal.h"

static uint16_t
nbd_export_flags(const struct vimg_nbd_export *exp)
{
    /* What qemu-nbd advertises, so that clients see the same export. */
    uint16_t flags = NBD_FLAG_HAS_FLAGS | NBD_FLAG_SEND_FLUSH | NBD_FLAG_SEND_FUA |
                     NBD_FLAG_SEND_DF | NBD_FLAG_SEND_CACHE;

    if (exp->is_read_only)
        return flags | NBD_FLAG_READ_ONLY;
    return flags | NBD_FLAG_SEND_TRIM | NBD_FLAG_SEND_WRITE_ZEROES | NBD_FLAG_SEND_FAST_ZERO;
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
    if (!(server->pool = vimg_pool_new(n_threads ? n_threads : 1, 0, err)))
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
    pthread_cond_destroy(&conn.cond);
    pthread_mutex_destroy(&conn.lock);
    pthread_mutex_destroy(&conn.send_lock);
    close(fd);
    return ret;
}
