/*
 * The client side of the fixed newstyle handshake, as far as a kernel NBD
 * device needs it (vimg-nbd -c): NBD_OPT_EXPORT_NAME, then the export size
 * and transmission flags (doc/proto.md "Fixed newstyle negotiation",
 * "NBD_OPT_EXPORT_NAME"). The kernel then speaks simple replies on the
 * socket itself.
 * Also the start of a TLS connection for the nbd driver (libnbd-client.c):
 * the greeting and NBD_OPT_STARTTLS ("TLS support"), refusals in qemu-img's
 * words.
 */
#include <errno.h>
#include <inttypes.h>
#include <string.h>
#include <sys/socket.h>

#include "nbd/internal.h"

#define NBD_OLDSTYLE_MAGIC 0x00420281861253ULL

/* Plain blocking socket I/O: whatever follows STARTTLS is not done here. */
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

/* Reads the server's greeting and answers it: fixed newstyle, no zeroes when offered. */
static int
client_greeting(int fd, uint16_t *server_flags, uint32_t *client_flags, struct vimg_error *err)
{
    uint8_t buf[18];
    int ret;

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
    *server_flags = nbd_get_be16(buf + 16);
    if (!(*server_flags & NBD_FLAG_FIXED_NEWSTYLE))
        return vimg_error_set(err, ENOTSUP, "Server does not support fixed newstyle "
                              "negotiation");
    *client_flags = NBD_FLAG_C_FIXED_NEWSTYLE;
    if (*server_flags & NBD_FLAG_NO_ZEROES)
        *client_flags |= NBD_FLAG_C_NO_ZEROES;
    nbd_put_be32(buf, *client_flags);
    return client_send(fd, buf, 4, err);
}

/* What qemu-img says when a server refuses NBD_OPT_STARTTLS with reply type. */
static int
client_starttls_refused(uint32_t type, const char *msg, struct vimg_error *err)
{
    static const char *const why[] = {
        [1] = "Server don't support STARTTLS option",
        [2] = "Denied by server for option 5 (starttls)",
        [3] = "Invalid parameters for option 5 (starttls)",
        [4] = "Server lacks support for option 5 (starttls)",
        [5] = "TLS negotiation required before option 5 (starttls)\n"
              "Did you forget a valid tls-creds?",
        [6] = "Requested export not available",
        [7] = "Server shutting down before option 5 (starttls)",
        [8] = "Server requires INFO_BLOCK_SIZE for option 5 (starttls)",
    };
    static const char *const names[] = { "<unknown>", "ack", "server", "info", "meta context" };
    uint32_t code = type & ~NBD_REP_FLAG_ERROR;

    if (!(type & NBD_REP_FLAG_ERROR))
        return vimg_error_set(err, EINVAL, "Server answered option 5 (starttls) with "
                              "unexpected reply %" PRIu32 " (%s)", type,
                              names[type < 5 ? type : 0]);
    if (code == 1)
        return vimg_error_set(err, ENOTSUP, "%s", why[1]);
    return vimg_error_set(err, code == 6 ? ENOENT : EINVAL, "%s%s%s",
                          code < 9 ? why[code] : "Unknown error code when asking for "
                          "option 5 (starttls)", msg[0] ? "\nserver reported: " : "", msg);
}

int
nbd_client_starttls(int fd, uint32_t *client_flags, struct vimg_error *err)
{
    uint16_t server_flags;
    uint8_t buf[20];
    char msg[1024];
    uint32_t type, len, keep;
    int ret;

    if ((ret = client_greeting(fd, &server_flags, client_flags, err)) < 0)
        return ret;
    nbd_put_be64(buf, NBD_OPTS_MAGIC);
    nbd_put_be32(buf + 8, NBD_OPT_STARTTLS);
    nbd_put_be32(buf + 12, 0);
    if ((ret = client_send(fd, buf, 16, err)) < 0 || (ret = client_recv(fd, buf, 20, err)) < 0)
        return ret;
    if (nbd_get_be64(buf) != NBD_REP_MAGIC || nbd_get_be32(buf + 8) != NBD_OPT_STARTTLS)
        return vimg_error_set(err, EINVAL, "Unexpected option reply from the NBD server");
    type = nbd_get_be32(buf + 12);
    len = nbd_get_be32(buf + 16);
    keep = len < sizeof(msg) - 1 ? len : (uint32_t)sizeof(msg) - 1;
    if ((ret = client_recv(fd, msg, keep, err)) < 0)
        return ret;
    msg[keep] = '\0';
    for (uint32_t left = len - keep; left > 0; ) {     /* the rest of a long message */
        char sink[512];
        uint32_t n = left < sizeof(sink) ? left : (uint32_t)sizeof(sink);
        if ((ret = client_recv(fd, sink, n, err)) < 0)
            return ret;
        left -= n;
    }
    return type == NBD_REP_ACK ? 0 : client_starttls_refused(type, msg, err);
}

int
vimg_nbd_client_handshake(int fd, const char *export_name, uint64_t *size, uint16_t *flags,
                          struct vimg_error *err)
{
    size_t name_len = strlen(export_name);
    uint8_t buf[10], opt[16], zeroes[124];
    uint16_t server_flags;
    uint32_t client_flags;
    int ret;

    if (name_len > NBD_MAX_STRING)
        return vimg_error_set(err, EINVAL, "export name '%s' too long", export_name);
    if ((ret = client_greeting(fd, &server_flags, &client_flags, err)) < 0)
        return ret;
    nbd_put_be64(opt, NBD_OPTS_MAGIC);
    nbd_put_be32(opt + 8, NBD_OPT_EXPORT_NAME);
    nbd_put_be32(opt + 12, (uint32_t)name_len);
    if ((ret = client_send(fd, opt, sizeof(opt), err)) < 0 ||
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
