/*
 * The NBD transmission phase, server side (doc/proto.md "Transmission",
 * "Request types"). One thread per connection reads requests, with their
 * write payloads, and queues them on the server's pool; workers validate
 * and execute them and send each whole reply under the connection's send
 * lock. Reads answer with OFFSET_DATA and OFFSET_HOLE chunks when
 * structured replies were negotiated; BLOCK_STATUS answers for
 * base:allocation, qemu:allocation-depth and qemu:dirty-bitmap:NAME.
 * A connection holds at most NBD_MAX_INFLIGHT requests and
 * NBD_MAX_INFLIGHT_BYTES of buffers; the reader waits beyond that.
 * Leaves out: extended headers (64-bit lengths), NBD_CMD_RESIZE.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "nbd/internal.h"

#define NBD_MIN_HOLE        4096u   /* zero runs shorter than this are sent as data */
/* Shorter reads go out as one data chunk without asking block status: clients that care
 * about holes ask BLOCK_STATUS, and small random reads are where the lookup costs most. */
#define NBD_MIN_SPARSE_READ (64u << 10)
#define NBD_MAX_EXTENTS     1024u   /* block status descriptors per context and reply */

struct nbd_job {
    struct nbd_conn *conn;
    struct nbd_request req;
    uint8_t *payload;           /* NBD_CMD_WRITE data, owned */
    uint64_t cost;              /* bytes counted in conn->inflight_bytes */
};

/* One content chunk of a read reply: [offset, +len) of the request, data or hole. */
struct nbd_read_chunk {
    uint64_t offset;            /* relative to the request */
    uint32_t len;
    bool is_hole;
    uint8_t hdr[NBD_CHUNK_HEADER_SIZE + 12];
};

struct nbd_read {
    struct nbd_read_chunk *chunks;
    size_t n_chunks, cap;
};

static uint16_t
nbd_allowed_flags(const struct nbd_conn *conn, uint16_t type)
{
    switch (type) {
    case NBD_CMD_READ:
        return NBD_CMD_FLAG_FUA | (conn->has_structured ? NBD_CMD_FLAG_DF : 0);
    case NBD_CMD_WRITE_ZEROES:
        return NBD_CMD_FLAG_FUA | NBD_CMD_FLAG_NO_HOLE | NBD_CMD_FLAG_FAST_ZERO;
    case NBD_CMD_BLOCK_STATUS:
        return NBD_CMD_FLAG_FUA | NBD_CMD_FLAG_REQ_ONE;
    default:
        return NBD_CMD_FLAG_FUA;
    }
}

/* Returns 0 or the errno to answer with; *why says what was wrong. */
static int
nbd_check_request(const struct nbd_conn *conn, const struct nbd_request *req, const char **why)
{
    const struct vimg_nbd_server *server = conn->server;
    bool is_write = req->type == NBD_CMD_WRITE || req->type == NBD_CMD_TRIM ||
                    req->type == NBD_CMD_WRITE_ZEROES;

    if (req->type > NBD_CMD_BLOCK_STATUS || req->type == NBD_CMD_DISC) {
        *why = "unknown command";
        return EINVAL;
    }
    if (req->flags & ~nbd_allowed_flags(conn, req->type)) {
        *why = "unsupported flags for this command";
        return EINVAL;
    }
    if (is_write && server->exp.is_read_only) {
        *why = "export is read-only";
        return EPERM;
    }
    if (req->type == NBD_CMD_FLUSH)
        return 0;
    if (req->type == NBD_CMD_BLOCK_STATUS && !conn->has_allocation && !conn->has_depth &&
        !conn->has_bitmap) {
        *why = "no metadata context was negotiated";
        return EINVAL;
    }
    if (req->offset > server->size || req->length > server->size - req->offset) {
        /* EINVAL for writes too (the spec suggests ENOSPC): qemu-nbd's answer. */
        *why = "request is beyond the end of the export";
        return EINVAL;
    }
    if ((req->type == NBD_CMD_READ || req->type == NBD_CMD_CACHE) &&
        req->length > NBD_MAX_BLOCK) {
        *why = "request is larger than the maximum block size";
        return EINVAL;
    }
    return 0;
}

/* Sends the reply of a request without payload: simple, or an error chunk with a message. */
static int
nbd_reply_status(struct nbd_conn *conn, const struct nbd_request *req, int errnum,
                 const char *msg, struct vimg_error *err)
{
    uint32_t wire = errnum ? nbd_errno_to_wire(errnum) : 0;
    int ret;

    pthread_mutex_lock(&conn->send_lock);
    if (wire && conn->has_structured)
        ret = nbd_send_error_chunk(conn, req->cookie, wire, msg, err);
    else
        ret = nbd_send_simple_reply(conn, req->cookie, wire, NULL, 0, err);
    pthread_mutex_unlock(&conn->send_lock);
    return ret;
}

static int
nbd_read_add(struct nbd_read *r, uint64_t offset, uint64_t len, bool is_hole)
{
    struct nbd_read_chunk *last = r->n_chunks ? &r->chunks[r->n_chunks - 1] : NULL;

    if (last && last->is_hole == is_hole && last->offset + last->len == offset) {
        last->len += (uint32_t)len;
        return 0;
    }
    if (r->n_chunks == r->cap) {
        size_t cap = r->cap ? 2 * r->cap : 16;
        struct nbd_read_chunk *c = realloc(r->chunks, cap * sizeof(*c));
        if (!c)
            return -ENOMEM;
        r->chunks = c;
        r->cap = cap;
    }
    r->chunks[r->n_chunks++] = (struct nbd_read_chunk){ .offset = offset, .len = (uint32_t)len,
                                                        .is_hole = is_hole };
    return 0;
}

/* Splits the request into data and hole chunks by block status (base:allocation). */
static int
nbd_read_plan(struct nbd_conn *conn, const struct nbd_request *req, struct nbd_read *r)
{
    struct vimg_nbd_server *server = conn->server;
    uint64_t pos = 0;
    bool can_hole = conn->has_structured && !(req->flags & NBD_CMD_FLAG_DF) &&
                    req->length >= NBD_MIN_SPARSE_READ;

    while (pos < req->length) {
        struct vimg_block_status bs;
        uint64_t run = req->length - pos;
        bool is_hole = false;
        if (can_hole &&
            vimg_node_block_status_above(server->exp.node, NULL,
                                         server->exp.offset + req->offset + pos, run, &bs,
                                         NULL) == 0 && bs.bytes > 0) {
            run = bs.bytes < run ? bs.bytes : run;
            is_hole = (bs.flags & VIMG_BS_ZERO) && run >= NBD_MIN_HOLE;
        }
        if (nbd_read_add(r, pos, run, is_hole) < 0)
            return -ENOMEM;
        pos += run;
    }
    return 0;
}

static int
nbd_read_data(struct nbd_conn *conn, const struct nbd_request *req, const struct nbd_read *r,
              uint8_t *buf, struct vimg_error *err)
{
    const struct vimg_nbd_server *server = conn->server;
    int ret;

    for (size_t i = 0; i < r->n_chunks; i++) {
        const struct nbd_read_chunk *c = &r->chunks[i];
        if (c->is_hole)
            continue;
        ret = vimg_node_pread(server->exp.node, server->exp.offset + req->offset + c->offset,
                              buf + c->offset, c->len, 0, err);
        if (ret < 0)
            return ret;
    }
    return 0;
}

static int
nbd_send_read_chunks(struct nbd_conn *conn, const struct nbd_request *req,
                     struct nbd_read *r, uint8_t *buf, struct vimg_error *err)
{
    struct iovec *iov = calloc(2 * r->n_chunks + 1, sizeof(*iov));
    uint8_t none_hdr[NBD_CHUNK_HEADER_SIZE];
    int n = 0, ret;

    if (!iov)
        return vimg_error_set(err, ENOMEM, "Out of memory");
    for (size_t i = 0; i < r->n_chunks; i++) {
        struct nbd_read_chunk *c = &r->chunks[i];
        uint16_t flags = i + 1 == r->n_chunks ? NBD_REPLY_FLAG_DONE : 0;
        nbd_put_be64(c->hdr + NBD_CHUNK_HEADER_SIZE, req->offset + c->offset);
        if (c->is_hole) {
            nbd_encode_chunk_header(c->hdr, flags, NBD_REPLY_TYPE_OFFSET_HOLE, req->cookie, 12);
            nbd_put_be32(c->hdr + NBD_CHUNK_HEADER_SIZE + 8, c->len);
            iov[n++] = (struct iovec){ .iov_base = c->hdr, .iov_len = sizeof(c->hdr) };
        } else {
            nbd_encode_chunk_header(c->hdr, flags, NBD_REPLY_TYPE_OFFSET_DATA, req->cookie,
                                    8 + c->len);
            iov[n++] = (struct iovec){ .iov_base = c->hdr, .iov_len = NBD_CHUNK_HEADER_SIZE + 8 };
            iov[n++] = (struct iovec){ .iov_base = buf + c->offset, .iov_len = c->len };
        }
    }
    if (r->n_chunks == 0) {
        /* A zero-length read: nothing but the end of the reply. */
        nbd_encode_chunk_header(none_hdr, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_NONE,
                                req->cookie, 0);
        iov[n++] = (struct iovec){ .iov_base = none_hdr, .iov_len = sizeof(none_hdr) };
    }
    pthread_mutex_lock(&conn->send_lock);
    ret = nbd_send_iov(conn, iov, n, err);
    pthread_mutex_unlock(&conn->send_lock);
    free(iov);
    return ret;
}

static int
nbd_do_read(struct nbd_conn *conn, const struct nbd_request *req, struct vimg_error *err)
{
    struct nbd_read r = { 0 };
    struct vimg_error io_err = { 0 };
    uint8_t *buf = malloc(req->length ? req->length : 1);
    int ret;

    if (!buf)
        return nbd_reply_status(conn, req, ENOMEM, "Out of memory", err);
    ret = nbd_read_plan(conn, req, &r);
    if (ret == 0)
        ret = nbd_read_data(conn, req, &r, buf, &io_err);
    else
        vimg_error_set(&io_err, ENOMEM, "Out of memory");
    if (ret < 0) {
        /* Nothing was sent yet, so one error ends the reply (simple: no payload follows). */
        ret = nbd_reply_status(conn, req, -ret, io_err.msg, err);
    } else if (conn->has_structured) {
        ret = nbd_send_read_chunks(conn, req, &r, buf, err);
    } else {
        pthread_mutex_lock(&conn->send_lock);
        ret = nbd_send_simple_reply(conn, req->cookie, 0, buf, req->length, err);
        pthread_mutex_unlock(&conn->send_lock);
    }
    free(r.chunks);
    free(buf);
    return ret;
}

static uint32_t
nbd_allocation_flags(const struct vimg_block_status *bs)
{
    if ((bs->flags & VIMG_BS_ZERO) && !(bs->flags & VIMG_BS_DATA))
        return NBD_STATE_HOLE | NBD_STATE_ZERO;
    return bs->flags & VIMG_BS_ZERO ? NBD_STATE_ZERO : 0;
}

/* qemu:allocation-depth: 0 unallocated, else 1 + the number of layers above the one. */
static uint32_t
nbd_depth_value(const struct vimg_block_status *bs)
{
    return bs->flags & VIMG_BS_ALLOCATED ? (uint32_t)bs->depth + 1 : 0;
}

enum nbd_context_kind {
    NBD_KIND_ALLOCATION,
    NBD_KIND_DEPTH,
    NBD_KIND_BITMAP,
    NBD_N_KINDS,
};

static const uint32_t nbd_context_ids[NBD_N_KINDS] = {
    NBD_CONTEXT_ID_ALLOCATION, NBD_CONTEXT_ID_DEPTH, NBD_CONTEXT_ID_BITMAP,
};

/* qemu:dirty-bitmap: the run of equal bits at image offset pos, up to max bytes. */
static void
nbd_bitmap_status(struct vimg_nbd_server *server, uint64_t pos, uint64_t max,
                  uint64_t *bytes, uint32_t *flags)
{
    uint64_t gran = server->bitmap_granularity, i = pos / gran, end = pos + max;
    uint64_t at = (i + 1) * gran;
    bool is_dirty;

    pthread_mutex_lock(&server->bitmap_lock);
    is_dirty = i < server->bitmap_n_bits && (server->bitmap_bits[i / 8] >> (i % 8) & 1);
    for (i++; at < end && i < server->bitmap_n_bits; i++, at += gran)
        if ((bool)(server->bitmap_bits[i / 8] >> (i % 8) & 1) != is_dirty)
            break;
    pthread_mutex_unlock(&server->bitmap_lock);
    *bytes = (at < end ? at : end) - pos;
    *flags = is_dirty ? 1 : 0;
}

/* One run of the context at request offset pos; returns 0 or -errno. */
static int
nbd_context_status(struct nbd_conn *conn, const struct nbd_request *req,
                   enum nbd_context_kind kind, uint64_t pos, uint64_t *bytes, uint32_t *flags,
                   struct vimg_error *err)
{
    struct vimg_nbd_server *server = conn->server;
    uint64_t at = server->exp.offset + req->offset + pos;
    struct vimg_block_status bs;
    int ret;

    if (kind == NBD_KIND_BITMAP) {
        nbd_bitmap_status(server, at, req->length - pos, bytes, flags);
        return 0;
    }
    ret = vimg_node_block_status_above(server->exp.node, NULL, at, req->length - pos, &bs, err);
    if (ret < 0)
        return ret;
    *bytes = bs.bytes < req->length - pos ? bs.bytes : req->length - pos;
    *flags = kind == NBD_KIND_DEPTH ? nbd_depth_value(&bs) : nbd_allocation_flags(&bs);
    return 0;
}

/*
 * Fills the descriptors of one context into payload (after its 4-byte id);
 * returns how many, or -errno.
 */
static int
nbd_extents(struct nbd_conn *conn, const struct nbd_request *req, enum nbd_context_kind kind,
            uint8_t *payload, struct vimg_error *err)
{
    unsigned max = req->flags & NBD_CMD_FLAG_REQ_ONE ? 1 : NBD_MAX_EXTENTS;
    uint64_t pos = 0, bytes;
    uint32_t last = 0, flags;
    unsigned n = 0;
    int ret;

    while (pos < req->length) {
        uint8_t *d;
        if ((ret = nbd_context_status(conn, req, kind, pos, &bytes, &flags, err)) < 0)
            return ret;
        if (bytes == 0)
            return vimg_error_set(err, EIO, "block status made no progress at 0x%llx",
                                  (unsigned long long)(req->offset + pos));
        if (n > 0 && flags == last) {
            d = payload + 4 + 8 * (n - 1);
            nbd_put_be32(d, nbd_get_be32(d) + (uint32_t)bytes);
        } else {
            if (n == max)
                break;
            d = payload + 4 + 8 * n++;
            nbd_put_be32(d, (uint32_t)bytes);
            nbd_put_be32(d + 4, flags);
            last = flags;
        }
        pos += bytes;
    }
    return (int)n;
}

static int
nbd_do_block_status(struct nbd_conn *conn, const struct nbd_request *req,
                    struct vimg_error *err)
{
    size_t size = 4 + 8 * NBD_MAX_EXTENTS;
    uint8_t *payload[NBD_N_KINDS] = { NULL };
    uint8_t hdr[NBD_N_KINDS][NBD_CHUNK_HEADER_SIZE];
    struct iovec iov[2 * NBD_N_KINDS];
    struct vimg_error io_err = { 0 };
    int n_iov = 0, ret = 0;
    bool want[NBD_N_KINDS] = { conn->has_allocation, conn->has_depth, conn->has_bitmap };

    for (int c = 0; c < NBD_N_KINDS; c++) {
        int n;
        if (!want[c])
            continue;
        if (!(payload[c] = malloc(size))) {
            ret = nbd_reply_status(conn, req, ENOMEM, "Out of memory", err);
            goto out;
        }
        n = req->length ? nbd_extents(conn, req, c, payload[c], &io_err) : 0;
        if (n < 0) {
            ret = nbd_reply_status(conn, req, -n, io_err.msg, err);
            goto out;
        }
        if (n == 0) {
            /* A zero-length query still gets one (empty) descriptor's worth of answer. */
            ret = nbd_reply_status(conn, req, EINVAL, "zero-length block status", err);
            goto out;
        }
        nbd_put_be32(payload[c], nbd_context_ids[c]);
        nbd_encode_chunk_header(hdr[c], 0, NBD_REPLY_TYPE_BLOCK_STATUS, req->cookie,
                                (uint32_t)(4 + 8 * n));
        iov[n_iov++] = (struct iovec){ .iov_base = hdr[c], .iov_len = sizeof(hdr[c]) };
        iov[n_iov++] = (struct iovec){ .iov_base = payload[c], .iov_len = 4 + 8 * (size_t)n };
    }
    /* The last chunk ends the reply. */
    nbd_put_be16((uint8_t *)iov[n_iov - 2].iov_base + 4, NBD_REPLY_FLAG_DONE);
    pthread_mutex_lock(&conn->send_lock);
    ret = nbd_send_iov(conn, iov, n_iov, err);
    pthread_mutex_unlock(&conn->send_lock);
out:
    for (int c = 0; c < NBD_N_KINDS; c++)
        free(payload[c]);
    return ret;
}

static int
nbd_exec_write(struct nbd_conn *conn, const struct nbd_job *job, struct vimg_error *err)
{
    const struct vimg_nbd_export *exp = &conn->server->exp;
    const struct nbd_request *req = &job->req;
    unsigned flags = req->flags & NBD_CMD_FLAG_FUA ? VIMG_REQ_FUA : 0;
    uint64_t offset = exp->offset + req->offset;

    if (exp->detect_zeroes != VIMG_NBD_DETECT_ZEROES_OFF && req->length &&
        vimg_buffer_is_zero(job->payload, req->length)) {
        if (exp->detect_zeroes == VIMG_NBD_DETECT_ZEROES_UNMAP &&
            exp->discard == VIMG_NBD_DISCARD_UNMAP)
            flags |= VIMG_REQ_MAY_UNMAP;
        return vimg_node_pwrite_zeroes(exp->node, offset, req->length, flags, err);
    }
    return vimg_node_pwrite(exp->node, offset, job->payload, req->length, flags, err);
}

static int
nbd_exec_zeroes(struct nbd_conn *conn, const struct nbd_request *req, struct vimg_error *err)
{
    const struct vimg_nbd_export *exp = &conn->server->exp;
    unsigned flags = 0;

    if (req->flags & NBD_CMD_FLAG_FUA)
        flags |= VIMG_REQ_FUA;
    if (!(req->flags & NBD_CMD_FLAG_NO_HOLE) && exp->discard == VIMG_NBD_DISCARD_UNMAP)
        flags |= VIMG_REQ_MAY_UNMAP;
    if (req->flags & NBD_CMD_FLAG_FAST_ZERO)
        flags |= VIMG_REQ_NO_FALLBACK;
    return vimg_node_pwrite_zeroes(exp->node, exp->offset + req->offset, req->length, flags,
                                   err);
}

static int
nbd_exec_cache(struct nbd_conn *conn, const struct nbd_request *req, struct vimg_error *err)
{
    const struct vimg_nbd_export *exp = &conn->server->exp;
    /* Reading the range is what warms the host cache; the data is dropped. */
    void *buf = malloc(req->length ? req->length : 1);
    int ret;

    if (!buf)
        return vimg_error_set(err, ENOMEM, "Out of memory");
    ret = vimg_node_pread(exp->node, exp->offset + req->offset, buf, req->length, 0, err);
    free(buf);
    return ret;
}

/* Runs a checked request that has no payload in its reply; returns 0 or -errno. */
static int
nbd_exec(struct nbd_conn *conn, const struct nbd_job *job, struct vimg_error *err)
{
    const struct vimg_nbd_export *exp = &conn->server->exp;
    const struct nbd_request *req = &job->req;
    int ret = 0;

    switch (req->type) {
    case NBD_CMD_WRITE:
        return nbd_exec_write(conn, job, err);
    case NBD_CMD_FLUSH:
        return vimg_node_flush(exp->node, err);
    case NBD_CMD_TRIM:
        if (exp->discard == VIMG_NBD_DISCARD_UNMAP)
            ret = vimg_node_discard(exp->node, exp->offset + req->offset, req->length, err);
        if (ret == 0 && (req->flags & NBD_CMD_FLAG_FUA))
            ret = vimg_node_flush(exp->node, err);
        return ret;
    case NBD_CMD_CACHE:
        return nbd_exec_cache(conn, req, err);
    case NBD_CMD_WRITE_ZEROES:
        return nbd_exec_zeroes(conn, req, err);
    default:
        return vimg_error_set(err, EINVAL, "unknown command %u", req->type);
    }
}

static void
nbd_job_finish(struct nbd_job *job)
{
    struct nbd_conn *conn = job->conn;

    pthread_mutex_lock(&conn->lock);
    conn->n_inflight--;
    conn->inflight_bytes -= job->cost;
    pthread_cond_broadcast(&conn->cond);
    pthread_mutex_unlock(&conn->lock);
    free(job->payload);
    free(job);
}

/* A send failed: the client is gone or broken. Stop the reader too. */
static void
nbd_conn_break(struct nbd_conn *conn, const struct vimg_error *err)
{
    pthread_mutex_lock(&conn->lock);
    if (!conn->is_broken)
        nbd_log(conn->server, "%s", err->msg);
    conn->is_broken = true;
    pthread_mutex_unlock(&conn->lock);
    shutdown(conn->fd, SHUT_RDWR);
}

static void
nbd_run_job(void *arg)
{
    struct nbd_job *job = arg;
    struct nbd_conn *conn = job->conn;
    const struct nbd_request *req = &job->req;
    struct vimg_error err = { 0 }, io_err = { 0 };
    const char *why = NULL;
    int errnum = nbd_check_request(conn, req, &why), ret;

    if (errnum) {
        ret = nbd_reply_status(conn, req, errnum, why, &err);
    } else if (req->type == NBD_CMD_READ) {
        ret = nbd_do_read(conn, req, &err);
    } else if (req->type == NBD_CMD_BLOCK_STATUS) {
        ret = nbd_do_block_status(conn, req, &err);
    } else {
        ret = nbd_exec(conn, job, &io_err);
        if (ret == 0 && req->type != NBD_CMD_FLUSH && req->type != NBD_CMD_CACHE)
            nbd_bitmap_mark(conn->server, conn->server->exp.offset + req->offset, req->length);
        ret = nbd_reply_status(conn, req, ret < 0 ? -ret : 0, io_err.msg, &err);
    }
    if (ret < 0)
        nbd_conn_break(conn, &err);
    nbd_job_finish(job);
}

/* Waits until the connection may take a request that needs cost bytes of buffers. */
static void
nbd_reserve(struct nbd_conn *conn, uint64_t cost)
{
    pthread_mutex_lock(&conn->lock);
    while (!conn->is_broken && conn->n_inflight > 0 &&
           (conn->n_inflight >= NBD_MAX_INFLIGHT ||
            conn->inflight_bytes + cost > NBD_MAX_INFLIGHT_BYTES))
        pthread_cond_wait(&conn->cond, &conn->lock);
    conn->n_inflight++;
    conn->inflight_bytes += cost;
    pthread_mutex_unlock(&conn->lock);
}

/* Reads one request and its payload. Returns 1 for a request, 0 at the end, or -errno. */
static int
nbd_read_request(struct nbd_conn *conn, struct nbd_job *job, struct vimg_error *err)
{
    uint8_t buf[NBD_REQUEST_SIZE];
    uint32_t magic;
    int ret = nbd_recv_full(conn, buf, sizeof(buf), true, err);

    if (ret == -ECONNRESET && strcmp(err->msg, "Client closed the connection") == 0)
        return 0;
    if (ret < 0)
        return ret;
    nbd_decode_request(buf, &job->req, &magic);
    if (magic != NBD_REQUEST_MAGIC)
        return vimg_error_set(err, EPROTO, "bad request magic 0x%08x", magic);
    if (job->req.type == NBD_CMD_DISC)
        return 0;
    if (job->req.type == NBD_CMD_WRITE) {
        /* The payload cannot be skipped safely past the limit: answer EINVAL, as qemu-nbd
         * does, then end the session instead of reading the payload as requests. */
        if (job->req.length > NBD_MAX_BLOCK) {
            nbd_reply_status(conn, &job->req, EINVAL, "request is larger than the maximum "
                             "block size", NULL);
            return vimg_error_set(err, EPROTO, "write of %u bytes is over the maximum block "
                                  "size (%u)", job->req.length, NBD_MAX_BLOCK);
        }
        if (!(job->payload = malloc(job->req.length ? job->req.length : 1)))
            return vimg_error_set(err, ENOMEM, "Out of memory");
        if ((ret = nbd_recv_full(conn, job->payload, job->req.length, false, err)) < 0)
            return ret;
    }
    if (job->req.type == NBD_CMD_WRITE ||
        (job->req.type == NBD_CMD_READ && job->req.length <= NBD_MAX_BLOCK))
        job->cost = job->req.length;
    return 1;
}

int
nbd_transmission(struct nbd_conn *conn, struct vimg_error *err)
{
    int ret;

    /* Unbuffered without memory: slower, not wrong. */
    conn->rbuf = malloc(NBD_RBUF_SIZE);
    for (;;) {
        struct nbd_job *job = calloc(1, sizeof(*job));
        if (!job) {
            ret = vimg_error_set(err, ENOMEM, "Out of memory");
            break;
        }
        job->conn = conn;
        ret = nbd_read_request(conn, job, err);
        if (ret <= 0) {
            free(job->payload);
            free(job);
            break;
        }
        nbd_reserve(conn, job->cost);
        if (vimg_pool_submit(conn->server->pool, nbd_run_job, job) < 0)
            nbd_run_job(job);
    }
    /* Replies to requests still running go out before the connection closes. */
    pthread_mutex_lock(&conn->lock);
    while (conn->n_inflight > 0)
        pthread_cond_wait(&conn->cond, &conn->lock);
    if (conn->is_broken && ret < 0)
        ret = 0;    /* the job that broke the connection already said why */
    pthread_mutex_unlock(&conn->lock);
    free(conn->rbuf);
    conn->rbuf = NULL;
    return ret;
}
