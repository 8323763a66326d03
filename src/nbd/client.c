/*
 * The client side of the fixed newstyle handshake, as far as a kernel NBD
 * device needs it (vimg-nbd -c): NBD_OPT_EXPORT_NAME, then the export size
 * and transmission flags (doc/proto.md "Fixed newstyle negotiation",
 * "NBD_OPT_EXPORT_NAME"). The kernel then speaks simple replies on the
 * socket itself.
 */
#include <errno.h>
#include <string.h>
#include <sys/socket.h>

#include "nbd/internal.h"

#define NBD_OLDSTYLE_MAGIC 0x00420281861253ULL

/* Plain blocking socket I/O: this side never uses TLS. */
static int
client_recv(int fd, void *buf, size_t len, struct vimg_error *err)
{
    uint8_t *p = buf;

    while (len > 0) {
        ssize_t n = recv(fd, p, len, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return vimg_error_set(err, n < 0 ? errno : ECONNRESET,
                                  "Failed to read from the NBD server: %s",
                                  n < 0 ? strerror(errno) : "Unexpected end-of-file");
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

static int
client_send(int fd, const void *buf, size_t len, struct vimg_error *err)
{
    const uint8_t *p = buf;

    while (len > 0) {
        ssize_t n = send(fd, p, len, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return vimg_error_set(err, errno, "Failed to send to the NBD server: %s",
                                  strerror(errno));
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

int
vimg_nbd_client_handshake(int fd, const char *export_name, uint64_t *size, uint16_t *flags,
                          struct vimg_error *err)
{
    size_t name_len = strlen(export_name);
    uint8_t buf[18], opt[16], zeroes[124];
    uint16_t server_flags;
    uint32_t client_flags = NBD_FLAG_C_FIXED_NEWSTYLE;
    int ret;

    if (name_len > NBD_MAX_STRING)
        return vimg_error_set(err, EINVAL, "export name '%s' too long", export_name);
    if ((ret = client_recv(fd, buf, 18, err)) < 0)
        return ret;
    if (nbd_get_be64(buf) != NBD_MAGIC)
        return vimg_error_set(err, EINVAL, "Bad initial magic received: 0x%016llx",
                              (unsigned long long)nbd_get_be64(buf));
    if (nbd_get_be64(buf + 8) == NBD_OLDSTYLE_MAGIC)
        return vimg_error_set(err, ENOTSUP, "Server is using oldstyle negotiation, which "
                              "is not supported");
    if (nbd_get_be64(buf + 8) != NBD_OPTS_MAGIC)
        return vimg_error_set(err, EINVAL, "Bad server magic received: 0x%016llx",
                              (unsigned long long)nbd_get_be64(buf + 8));
    server_flags = nbd_get_be16(buf + 16);
    if (!(server_flags & NBD_FLAG_FIXED_NEWSTYLE))
        return vimg_error_set(err, ENOTSUP, "Server does not support fixed newstyle "
                              "negotiation");
    if (server_flags & NBD_FLAG_NO_ZEROES)
        client_flags |= NBD_FLAG_C_NO_ZEROES;
    nbd_put_be32(buf, client_flags);
    nbd_put_be64(opt, NBD_OPTS_MAGIC);
    nbd_put_be32(opt + 8, NBD_OPT_EXPORT_NAME);
    nbd_put_be32(opt + 12, (uint32_t)name_len);
    if ((ret = client_send(fd, buf, 4, err)) < 0 ||
        (ret = client_send(fd, opt, sizeof(opt), err)) < 0 ||
        (name_len && (ret = client_send(fd, export_name, name_len, err)) < 0))
        return ret;
    /* A server without this export closes the connection here. */
    if ((ret = client_recv(fd, buf, 10, err)) < 0)
        return vimg_error_set(err, -ret, "Failed to read export length");
    *size = nbd_get_be64(buf);
    *flags = nbd_get_be16(buf + 8);
    if (!(client_flags & NBD_FLAG_C_NO_ZEROES) &&
        (ret = client_recv(fd, zeroes, sizeof(zeroes), err)) < 0)
        return ret;
    return 0;
}
