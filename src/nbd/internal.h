/*
 * What the phases of the NBD server share: the protocol's numbers
 * (SPECS.md "NBD protocol", doc/proto.md "Values"; QEMU's
 * qemu:allocation-depth from docs/interop/nbd.rst), the server and
 * connection structures, and the framing helpers of wire.c.
 */
#ifndef VIMG_NBD_INTERNAL_H
#define VIMG_NBD_INTERNAL_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <sys/uio.h>

#include <vimg/error.h>
#include <vimg/nbd.h>
#include <vimg/pool.h>

/* Handshake */
#define NBD_MAGIC                   0x4e42444d41474943ULL   /* "NBDMAGIC" */
#define NBD_OPTS_MAGIC              0x49484156454f5054ULL   /* "IHAVEOPT" */
#define NBD_REP_MAGIC               0x0003e889045565a9ULL
#define NBD_FLAG_FIXED_NEWSTYLE     0x0001u
#define NBD_FLAG_NO_ZEROES          0x0002u
#define NBD_FLAG_C_FIXED_NEWSTYLE   0x00000001u
#define NBD_FLAG_C_NO_ZEROES        0x00000002u

#define NBD_OPT_EXPORT_NAME         1
#define NBD_OPT_ABORT               2
#define NBD_OPT_LIST                3
#define NBD_OPT_STARTTLS            5
#define NBD_OPT_INFO                6
#define NBD_OPT_GO                  7
#define NBD_OPT_STRUCTURED_REPLY    8
#define NBD_OPT_LIST_META_CONTEXT   9
#define NBD_OPT_SET_META_CONTEXT    10

#define NBD_REP_ACK                 1
#define NBD_REP_SERVER              2
#define NBD_REP_INFO                3
#define NBD_REP_META_CONTEXT        4
#define NBD_REP_FLAG_ERROR          0x80000000u
#define NBD_REP_ERR_UNSUP           0x80000001u
#define NBD_REP_ERR_POLICY          0x80000002u
#define NBD_REP_ERR_INVALID         0x80000003u
#define NBD_REP_ERR_TLS_REQD        0x80000005u
#define NBD_REP_ERR_UNKNOWN         0x80000006u

#define NBD_INFO_EXPORT             0
#define NBD_INFO_NAME               1
#define NBD_INFO_DESCRIPTION        2
#define NBD_INFO_BLOCK_SIZE         3

/* Transmission flags */
#define NBD_FLAG_HAS_FLAGS          0x0001u
#define NBD_FLAG_READ_ONLY          0x0002u
#define NBD_FLAG_SEND_FLUSH         0x0004u
#define NBD_FLAG_SEND_FUA           0x0008u
#define NBD_FLAG_SEND_TRIM          0x0020u
#define NBD_FLAG_SEND_WRITE_ZEROES  0x0040u
#define NBD_FLAG_SEND_DF            0x0080u
#define NBD_FLAG_SEND_CACHE         0x0400u
#define NBD_FLAG_SEND_FAST_ZERO     0x0800u

/* Transmission */
#define NBD_REQUEST_MAGIC           0x25609513u
#define NBD_SIMPLE_REPLY_MAGIC      0x67446698u
#define NBD_STRUCTURED_REPLY_MAGIC  0x668e33efu
#define NBD_REQUEST_SIZE            28
#define NBD_SIMPLE_REPLY_SIZE       16
#define NBD_CHUNK_HEADER_SIZE       20

#define NBD_CMD_READ                0
#define NBD_CMD_WRITE               1
#define NBD_CMD_DISC                2
#define NBD_CMD_FLUSH               3
#define NBD_CMD_TRIM                4
#define NBD_CMD_CACHE               5
#define NBD_CMD_WRITE_ZEROES        6
#define NBD_CMD_BLOCK_STATUS        7

#define NBD_CMD_FLAG_FUA            0x0001u
#define NBD_CMD_FLAG_NO_HOLE        0x0002u
#define NBD_CMD_FLAG_DF             0x0004u
#define NBD_CMD_FLAG_REQ_ONE        0x0008u
#define NBD_CMD_FLAG_FAST_ZERO      0x0010u

#define NBD_REPLY_FLAG_DONE         0x0001u
#define NBD_REPLY_TYPE_NONE         0
#define NBD_REPLY_TYPE_OFFSET_DATA  1
#define NBD_REPLY_TYPE_OFFSET_HOLE  2
#define NBD_REPLY_TYPE_BLOCK_STATUS 5
#define NBD_REPLY_TYPE_ERROR        0x8001u

/* Error values on the wire */
#define NBD_EPERM                   1
#define NBD_EIO                     5
#define NBD_ENOMEM                  12
#define NBD_EINVAL                  22
#define NBD_ENOSPC                  28
#define NBD_EOVERFLOW               75
#define NBD_ENOTSUP                 95
#define NBD_ESHUTDOWN               108

#define NBD_STATE_HOLE              0x1u
#define NBD_STATE_ZERO              0x2u

/* Meta context ids this server hands out (any nonzero values would do). */
#define NBD_CONTEXT_ID_ALLOCATION   1
#define NBD_CONTEXT_ID_DEPTH        2
#define NBD_CONTEXT_ID_BITMAP       3
#define NBD_CONTEXT_ALLOCATION      "base:allocation"
#define NBD_CONTEXT_DEPTH           "qemu:allocation-depth"
#define NBD_CONTEXT_BITMAP_PREFIX   "qemu:dirty-bitmap:"

/* Limits: what INFO_BLOCK_SIZE advertises and what the server enforces. */
#define NBD_MIN_BLOCK               1u
#define NBD_PREFERRED_BLOCK         4096u
#define NBD_MAX_BLOCK               (32u << 20)
#define NBD_MAX_OPTION_LEN          (64u << 10)    /* longer option data ends the session */
#define NBD_MAX_STRING              4096u          /* names and queries, as the spec bounds them */
#define NBD_MAX_INFLIGHT            64u            /* requests per connection */
#define NBD_MAX_INFLIGHT_BYTES      (256u << 20)   /* read and write buffers per connection */
#define NBD_RBUF_SIZE               (64u << 10)    /* one recv can take many request headers */

struct vimg_nbd_server {
    struct vimg_nbd_export exp;     /* strings owned */
    uint64_t size;                  /* export size: image length minus exp.offset */
    uint16_t tx_flags;              /* transmission flags of the export */
    struct vimg_pool *pool;
    vimg_nbd_log_fn log;
    struct nbd_tls *tls;            /* NULL: no TLS; else clients must STARTTLS first */
    char *bitmap_context;           /* "qemu:dirty-bitmap:NAME" with -B, else NULL */
    uint8_t *bitmap_bits;           /* the bitmap as the export started (bit set: dirty) */
    uint64_t bitmap_granularity;
    uint64_t bitmap_n_bits;
    bool is_bitmap_live;            /* enabled bitmap, writable export: writes mark it */
    pthread_mutex_t bitmap_lock;    /* protects bitmap_bits when is_bitmap_live */
};

struct nbd_conn {
    struct vimg_nbd_server *server;
    int fd;
    void *tls;                      /* the GnuTLS session after STARTTLS, else NULL */
    uint8_t *rbuf;                  /* transmission: bytes received ahead (NBD_RBUF_SIZE) */
    size_t rbuf_start, rbuf_end;    /* the unread bytes of rbuf */
    bool is_fixed;                  /* fixed newstyle */
    bool no_zeroes;
    bool has_structured;            /* NBD_OPT_STRUCTURED_REPLY acknowledged */
    bool has_allocation;            /* contexts selected by NBD_OPT_SET_META_CONTEXT */
    bool has_depth;
    bool has_bitmap;
    pthread_mutex_t send_lock;      /* serialises whole replies on fd */
    pthread_mutex_t lock;           /* protects n_inflight, inflight_bytes, is_broken */
    pthread_cond_t cond;            /* signalled when a request finishes */
    unsigned n_inflight;
    uint64_t inflight_bytes;
    bool is_broken;                 /* a send failed: stop reading requests */
};

/* A decoded request header (doc/proto.md "Request message"). */
struct nbd_request {
    uint16_t flags;
    uint16_t type;
    uint64_t cookie;
    uint64_t offset;
    uint32_t length;
};

/* Handshake outcome */
enum nbd_handshake_result {
    NBD_HANDSHAKE_TRANSMIT = 1,     /* an export was chosen */
    NBD_HANDSHAKE_END = 2,          /* the client aborted or left */
};

int nbd_handshake(struct nbd_conn *conn, struct vimg_error *err);
/* server.c: marks [offset, +bytes) of the image dirty in a live -B bitmap. */
void nbd_bitmap_mark(struct vimg_nbd_server *server, uint64_t offset, uint64_t bytes);
int nbd_transmission(struct nbd_conn *conn, struct vimg_error *err);

/* tls.c: the server's credentials and the per-connection session */
struct nbd_tls;
int nbd_tls_new(const char *creds_id, const char *authz_id, struct nbd_tls **out,
                struct vimg_error *err);
void nbd_tls_free(struct nbd_tls *tls);
int nbd_tls_start(struct nbd_conn *conn, struct vimg_error *err);
void nbd_tls_end(struct nbd_conn *conn);
/* Bytes moved, 0 at the end of the stream, or -errno. */
ssize_t nbd_tls_recv(struct nbd_conn *conn, void *buf, size_t len);
ssize_t nbd_tls_send(struct nbd_conn *conn, const void *buf, size_t len);

/* client.c: the greeting and NBD_OPT_STARTTLS on a connected socket; *client_flags gets the
 * flags sent in answer to the greeting. Refusals fail in qemu-img's words. */
int nbd_client_starttls(int fd, uint32_t *client_flags, struct vimg_error *err);

/* wire.c: byte order */
void nbd_put_be16(uint8_t *p, uint16_t v);
void nbd_put_be32(uint8_t *p, uint32_t v);
void nbd_put_be64(uint8_t *p, uint64_t v);
uint16_t nbd_get_be16(const uint8_t *p);
uint32_t nbd_get_be32(const uint8_t *p);
uint64_t nbd_get_be64(const uint8_t *p);

/* wire.c: I/O. Reads return 0, -ECONNRESET at EOF before the first byte (eof_ok), or -errno. */
int nbd_recv_full(struct nbd_conn *conn, void *buf, size_t len, bool is_eof_ok,
                  struct vimg_error *err);
int nbd_send_iov(struct nbd_conn *conn, struct iovec *iov, int n_iov, struct vimg_error *err);
int nbd_send_full(struct nbd_conn *conn, const void *buf, size_t len, struct vimg_error *err);
void nbd_decode_request(const uint8_t *buf, struct nbd_request *req, uint32_t *magic);

/* wire.c: handshake replies */
int nbd_send_option_reply(struct nbd_conn *conn, uint32_t opt, uint32_t type, const void *data,
                          uint32_t len, struct vimg_error *err);
int nbd_send_option_error(struct nbd_conn *conn, uint32_t opt, uint32_t type,
                          struct vimg_error *err, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));

/* wire.c: transmission replies; callers hold conn->send_lock. */
int nbd_send_simple_reply(struct nbd_conn *conn, uint64_t cookie, uint32_t error,
                          const void *data, uint32_t len, struct vimg_error *err);
void nbd_encode_chunk_header(uint8_t *buf, uint16_t flags, uint16_t type, uint64_t cookie,
                             uint32_t len);
int nbd_send_error_chunk(struct nbd_conn *conn, uint64_t cookie, uint32_t error,
                         const char *msg, struct vimg_error *err);
uint32_t nbd_errno_to_wire(int errnum);

void nbd_log(const struct vimg_nbd_server *server, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

#endif
