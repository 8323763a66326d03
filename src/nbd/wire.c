/*
 * NBD framing: big-endian fields, whole-message socket I/O, option replies,
 * simple replies and structured reply chunks (doc/proto.md "Fixed newstyle
 * negotiation", "Simple reply message", "Structured reply chunk message").
 * Bytes go through the connection's TLS session once STARTTLS is done, and
 * in transmission through a receive buffer, so that a burst of requests
 * costs one recv.
 */
#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "nbd/internal.h"

void
nbd_put_be16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)(v >> 8);
    p[1] = (uint8_t)v;
}

void
nbd_put_be32(uint8_t *p, uint32_t v)
{
    nbd_put_be16(p, (uint16_t)(v >> 16));
    nbd_put_be16(p + 2, (uint16_t)v);
}

void
nbd_put_be64(uint8_t *p, uint64_t v)
{
    nbd_put_be32(p, (uint32_t)(v >> 32));
    nbd_put_be32(p + 4, (uint32_t)v);
}

uint16_t
nbd_get_be16(const uint8_t *p)
{
    return (uint16_t)((p[0] << 8) | p[1]);
}

uint32_t
nbd_get_be32(const uint8_t *p)
{
    return ((uint32_t)nbd_get_be16(p) << 16) | nbd_get_be16(p + 2);
}

uint64_t
nbd_get_be64(const uint8_t *p)
{
    return ((uint64_t)nbd_get_be32(p) << 32) | nbd_get_be32(p + 4);
}

static ssize_t
nbd_recv_some(struct nbd_conn *conn, void *buf, size_t len)
{
    ssize_t n;

    if (conn->tls) {
        n = nbd_tls_recv(conn, buf, len);
        if (n < 0)
            errno = (int)-n;
        return n < 0 ? -1 : n;
    }
    return recv(conn->fd, buf, len, 0);
}

int
nbd_recv_full(struct nbd_conn *conn, void *buf, size_t len, bool is_eof_ok,
              struct vimg_error *err)
{
    uint8_t *p = buf;
    size_t done = 0;

    while (done < len) {
        ssize_t n;
        if (conn->rbuf && conn->rbuf_start < conn->rbuf_end) {
            size_t k = conn->rbuf_end - conn->rbuf_start;
            k = k < len - done ? k : len - done;
            memcpy(p + done, conn->rbuf + conn->rbuf_start, k);
            conn->rbuf_start += k;
            done += k;
            continue;
        }
        if (conn->rbuf && len - done < NBD_RBUF_SIZE) {
            /* Small reads refill the buffer: a client's burst of requests costs one recv. */
            n = nbd_recv_some(conn, conn->rbuf, NBD_RBUF_SIZE);
            conn->rbuf_start = 0;
            conn->rbuf_end = n > 0 ? (size_t)n : 0;
            if (n > 0)
                continue;
        } else {
            n = nbd_recv_some(conn, p + done, len - done);
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            int e = errno == EAGAIN || errno == EWOULDBLOCK ? ETIMEDOUT : errno;
            return vimg_error_set(err, e, "Failed to read from the client: %s", strerror(e));
        }
        if (n == 0) {
            if (done == 0 && is_eof_ok)
                return vimg_error_set(err, ECONNRESET, "Client closed the connection");
            return vimg_error_set(err, ECONNRESET, "Unexpected end-of-file before all data "
                                  "were read");
        }
        done += (size_t)n;
    }
    return 0;
}

static ssize_t
nbd_send_some(struct nbd_conn *conn, const struct iovec *iov, int n_iov)
{
    struct msghdr msg = { .msg_iov = (struct iovec *)iov,
                          .msg_iovlen = n_iov < IOV_MAX ? n_iov : IOV_MAX };
    ssize_t n;

    if (conn->tls) {
        n = nbd_tls_send(conn, iov->iov_base, iov->iov_len);
        if (n < 0)
            errno = (int)-n;
        return n < 0 ? -1 : n;
    }
    return sendmsg(conn->fd, &msg, MSG_NOSIGNAL);
}

int
nbd_send_iov(struct nbd_conn *conn, struct iovec *iov, int n_iov, struct vimg_error *err)
{
    while (n_iov > 0) {
        ssize_t n = nbd_send_some(conn, iov, n_iov);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return vimg_error_set(err, errno, "Failed to send to the client: %s",
                                  strerror(errno));
        while (n > 0 && n_iov > 0) {
            if ((size_t)n >= iov->iov_len) {
                n -= (ssize_t)iov->iov_len;
                iov++;
                n_iov--;
            } else {
                iov->iov_base = (uint8_t *)iov->iov_base + n;
                iov->iov_len -= (size_t)n;
                n = 0;
            }
        }
        while (n_iov > 0 && iov->iov_len == 0) {
            iov++;
            n_iov--;
        }
    }
    return 0;
}

int
nbd_send_full(struct nbd_conn *conn, const void *buf, size_t len, struct vimg_error *err)
{
    struct iovec iov = { .iov_base = (void *)buf, .iov_len = len };

    return nbd_send_iov(conn, &iov, 1, err);
}

void
nbd_decode_request(const uint8_t *buf, struct nbd_request *req, uint32_t *magic)
{
    *magic = nbd_get_be32(buf);
    req->flags = nbd_get_be16(buf + 4);
    req->type = nbd_get_be16(buf + 6);
    req->cookie = nbd_get_be64(buf + 8);
    req->offset = nbd_get_be64(buf + 16);
    req->length = nbd_get_be32(buf + 24);
}

int
nbd_send_option_reply(struct nbd_conn *conn, uint32_t opt, uint32_t type, const void *data,
                      uint32_t len, struct vimg_error *err)
{
    uint8_t hdr[20];
    struct iovec iov[2] = {
        { .iov_base = hdr, .iov_len = sizeof(hdr) },
        { .iov_base = (void *)data, .iov_len = len },
    };

    nbd_put_be64(hdr, NBD_REP_MAGIC);
    nbd_put_be32(hdr + 8, opt);
    nbd_put_be32(hdr + 12, type);
    nbd_put_be32(hdr + 16, len);
    return nbd_send_iov(conn, iov, len ? 2 : 1, err);
}

int
nbd_send_option_error(struct nbd_conn *conn, uint32_t opt, uint32_t type,
                      struct vimg_error *err, const char *fmt, ...)
{
    char msg[NBD_MAX_STRING];
    va_list ap;
    int n;

    va_start(ap, fmt);
    n = vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    if (n < 0)
        n = 0;
    if ((size_t)n >= sizeof(msg))
        n = sizeof(msg) - 1;
    nbd_log(conn->server, "%s", msg);
    return nbd_send_option_reply(conn, opt, type, msg, (uint32_t)n, err);
}

int
nbd_send_simple_reply(struct nbd_conn *conn, uint64_t cookie, uint32_t error, const void *data,
                      uint32_t len, struct vimg_error *err)
{
    uint8_t hdr[NBD_SIMPLE_REPLY_SIZE];
    struct iovec iov[2] = {
        { .iov_base = hdr, .iov_len = sizeof(hdr) },
        { .iov_base = (void *)data, .iov_len = len },
    };

    nbd_put_be32(hdr, NBD_SIMPLE_REPLY_MAGIC);
    nbd_put_be32(hdr + 4, error);
    nbd_put_be64(hdr + 8, cookie);
    return nbd_send_iov(conn, iov, len ? 2 : 1, err);
}

void
nbd_encode_chunk_header(uint8_t *buf, uint16_t flags, uint16_t type, uint64_t cookie,
                        uint32_t len)
{
    nbd_put_be32(buf, NBD_STRUCTURED_REPLY_MAGIC);
    nbd_put_be16(buf + 4, flags);
    nbd_put_be16(buf + 6, type);
    nbd_put_be64(buf + 8, cookie);
    nbd_put_be32(buf + 16, len);
}

/* One NBD_REPLY_TYPE_ERROR chunk that ends the reply. */
int
nbd_send_error_chunk(struct nbd_conn *conn, uint64_t cookie, uint32_t error, const char *msg,
                     struct vimg_error *err)
{
    uint8_t hdr[NBD_CHUNK_HEADER_SIZE + 6];
    size_t msg_len = strlen(msg);
    struct iovec iov[2];

    if (msg_len > NBD_MAX_STRING)
        msg_len = NBD_MAX_STRING;
    nbd_encode_chunk_header(hdr, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_ERROR, cookie,
                            (uint32_t)(6 + msg_len));
    nbd_put_be32(hdr + NBD_CHUNK_HEADER_SIZE, error);
    nbd_put_be16(hdr + NBD_CHUNK_HEADER_SIZE + 4, (uint16_t)msg_len);
    iov[0] = (struct iovec){ .iov_base = hdr, .iov_len = sizeof(hdr) };
    iov[1] = (struct iovec){ .iov_base = (void *)msg, .iov_len = msg_len };
    return nbd_send_iov(conn, iov, msg_len ? 2 : 1, err);
}

/* The spec allows only a few errno values on the wire; everything else is EIO. */
uint32_t
nbd_errno_to_wire(int errnum)
{
    switch (errnum) {
    case EPERM:
    case EACCES:
    case EROFS:
        return NBD_EPERM;
    case ENOMEM:
        return NBD_ENOMEM;
    case EINVAL:
        return NBD_EINVAL;
    case ENOSPC:
    case EDQUOT:
    case EFBIG:
        return NBD_ENOSPC;
    case EOVERFLOW:
        return NBD_EOVERFLOW;
    case ENOTSUP:
        return NBD_ENOTSUP;
    case ESHUTDOWN:
        return NBD_ESHUTDOWN;
    default:
        return NBD_EIO;
    }
}

void
nbd_log(const struct vimg_nbd_server *server, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;

    if (!server->log)
        return;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    server->log(msg);
}
