/*
 * The NBD handshake, server side: fixed newstyle negotiation with
 * NBD_OPT_EXPORT_NAME, ABORT, LIST, INFO, GO, STRUCTURED_REPLY and
 * LIST/SET_META_CONTEXT (doc/proto.md "Handshake", "Option types"; the
 * qemu:allocation-depth context from QEMU's docs/interop/nbd.rst).
 * Every length the client sends is bounded before it sizes a buffer and
 * checked against the option's length before a field is read.
 * With TLS credentials, every option but STARTTLS and ABORT is refused with
 * NBD_REP_ERR_TLS_REQD (EXPORT_NAME ends the session) until the TLS
 * handshake is done ("TLS support", "FORCEDTLS" mode).
 * Leaves out: oldstyle negotiation (never offered), extended headers.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "nbd/internal.h"

/* The option being negotiated: its number and its data, bounded. */
struct nbd_option {
    uint32_t opt;
    uint32_t len;
    uint8_t *data;
};

/* Reads a length-prefixed string at *pos; false when it does not fit or is too long. */
static bool
nbd_take_string(const struct nbd_option *o, uint32_t *pos, const char **s, uint32_t *len)
{
    uint32_t n;

    if (o->len - *pos < 4)
        return false;
    n = nbd_get_be32(o->data + *pos);
    if (n > NBD_MAX_STRING || n > o->len - *pos - 4)
        return false;
    *s = (const char *)o->data + *pos + 4;
    *len = n;
    *pos += 4 + n;
    return true;
}

static bool
nbd_name_matches(const struct vimg_nbd_server *server, const char *name, uint32_t len)
{
    return strlen(server->exp.name) == len && memcmp(server->exp.name, name, len) == 0;
}

/* DF means something only with structured replies: qemu-nbd offers it only then. */
static uint16_t
nbd_conn_flags(const struct nbd_conn *conn)
{
    return conn->server->tx_flags | (conn->has_structured ? NBD_FLAG_SEND_DF : 0);
}

static int
nbd_reply_export_name(struct nbd_conn *conn, struct vimg_error *err)
{
    uint8_t buf[8 + 2 + 124] = { 0 };

    nbd_put_be64(buf, conn->server->size);
    nbd_put_be16(buf + 8, nbd_conn_flags(conn));
    return nbd_send_full(conn, buf, conn->no_zeroes ? 10 : sizeof(buf), err);
}

/* NBD_OPT_EXPORT_NAME cannot fail politely: an unknown name ends the session. */
static int
nbd_opt_export_name(struct nbd_conn *conn, const struct nbd_option *o, struct vimg_error *err)
{
    int ret;

    if (o->len > NBD_MAX_STRING || !nbd_name_matches(conn->server, (const char *)o->data,
                                                     o->len))
        return vimg_error_set(err, ENOENT, "export '%.*s' not present",
                              (int)(o->len < 256 ? o->len : 256), (const char *)o->data);
    if ((ret = nbd_reply_export_name(conn, err)) < 0)
        return ret;
    return NBD_HANDSHAKE_TRANSMIT;
}

static int
nbd_opt_list(struct nbd_conn *conn, const struct nbd_option *o, struct vimg_error *err)
{
    const struct vimg_nbd_export *exp = &conn->server->exp;
    size_t name_len = strlen(exp->name);
    size_t desc_len = exp->description ? strlen(exp->description) : 0;
    uint8_t *buf;
    int ret;

    if (o->len != 0)
        return nbd_send_option_error(conn, o->opt, NBD_REP_ERR_INVALID, err,
                                     "request length %u is not zero", o->len);
    if (!(buf = malloc(4 + name_len + desc_len)))
        return vimg_error_set(err, ENOMEM, "Out of memory");
    /* The description rides in the free-form part after the name. */
    nbd_put_be32(buf, (uint32_t)name_len);
    memcpy(buf + 4, exp->name, name_len);
    memcpy(buf + 4 + name_len, exp->description ? exp->description : "", desc_len);
    ret = nbd_send_option_reply(conn, o->opt, NBD_REP_SERVER, buf,
                                (uint32_t)(4 + name_len + desc_len), err);
    free(buf);
    if (ret == 0)
        ret = nbd_send_option_reply(conn, o->opt, NBD_REP_ACK, NULL, 0, err);
    return ret;
}

static int
nbd_send_info(struct nbd_conn *conn, uint32_t opt, uint16_t info, const void *data,
              uint32_t len, struct vimg_error *err)
{
    uint8_t buf[2 + NBD_MAX_STRING];

    if (len > NBD_MAX_STRING)
        len = NBD_MAX_STRING;
    nbd_put_be16(buf, info);
    memcpy(buf + 2, data, len);
    return nbd_send_option_reply(conn, opt, NBD_REP_INFO, buf, 2 + len, err);
}

static int
nbd_send_infos(struct nbd_conn *conn, const struct nbd_option *o, const uint8_t *requests,
               uint16_t n_requests, struct vimg_error *err)
{
    const struct vimg_nbd_server *server = conn->server;
    uint8_t buf[12];
    bool want_name = false, want_desc = false;
    int ret;

    for (uint16_t i = 0; i < n_requests; i++) {
        uint16_t r = nbd_get_be16(requests + 2 * i);
        want_name |= r == NBD_INFO_NAME;
        want_desc |= r == NBD_INFO_DESCRIPTION;
    }
    if (want_name && (ret = nbd_send_info(conn, o->opt, NBD_INFO_NAME, server->exp.name,
                                          (uint32_t)strlen(server->exp.name), err)) < 0)
        return ret;
    if (want_desc && server->exp.description &&
        (ret = nbd_send_info(conn, o->opt, NBD_INFO_DESCRIPTION, server->exp.description,
                             (uint32_t)strlen(server->exp.description), err)) < 0)
        return ret;
    /* Block sizes go out unasked: clients that do not ask still benefit from them. */
    nbd_put_be32(buf, NBD_MIN_BLOCK);
    nbd_put_be32(buf + 4, NBD_PREFERRED_BLOCK);
    nbd_put_be32(buf + 8, NBD_MAX_BLOCK);
    if ((ret = nbd_send_info(conn, o->opt, NBD_INFO_BLOCK_SIZE, buf, 12, err)) < 0)
        return ret;
    nbd_put_be64(buf, server->size);
    nbd_put_be16(buf + 8, nbd_conn_flags(conn));
    return nbd_send_info(conn, o->opt, NBD_INFO_EXPORT, buf, 10, err);
}

/* NBD_OPT_INFO and NBD_OPT_GO: name, then a count of 16-bit information requests. */
static int
nbd_opt_info_go(struct nbd_conn *conn, const struct nbd_option *o, struct vimg_error *err)
{
    const char *name;
    uint32_t name_len, pos = 0;
    uint16_t n_requests;
    int ret;

    if (!nbd_take_string(o, &pos, &name, &name_len) || o->len - pos < 2)
        return nbd_send_option_error(conn, o->opt, NBD_REP_ERR_INVALID, err,
                                     "request is too short or its name too long");
    n_requests = nbd_get_be16(o->data + pos);
    pos += 2;
    if (o->len - pos != 2u * n_requests)
        return nbd_send_option_error(conn, o->opt, NBD_REP_ERR_INVALID, err,
                                     "request length %u does not match %u information "
                                     "requests", o->len, n_requests);
    if (!nbd_name_matches(conn->server, name, name_len))
        return nbd_send_option_error(conn, o->opt, NBD_REP_ERR_UNKNOWN, err,
                                     "export '%.*s' not present", (int)name_len, name);
    if ((ret = nbd_send_infos(conn, o, o->data + pos, n_requests, err)) < 0)
        return ret;
    if ((ret = nbd_send_option_reply(conn, o->opt, NBD_REP_ACK, NULL, 0, err)) < 0)
        return ret;
    return o->opt == NBD_OPT_GO ? NBD_HANDSHAKE_TRANSMIT : 0;
}

static int
nbd_opt_structured_reply(struct nbd_conn *conn, const struct nbd_option *o,
                         struct vimg_error *err)
{
    if (o->len != 0)
        return nbd_send_option_error(conn, o->opt, NBD_REP_ERR_INVALID, err,
                                     "request length %u is not zero", o->len);
    if (conn->has_structured)
        return nbd_send_option_error(conn, o->opt, NBD_REP_ERR_INVALID, err,
                                     "structured replies already negotiated");
    conn->has_structured = true;
    return nbd_send_option_reply(conn, o->opt, NBD_REP_ACK, NULL, 0, err);
}

static int
nbd_send_context(struct nbd_conn *conn, uint32_t opt, uint32_t id, const char *name,
                 struct vimg_error *err)
{
    uint8_t buf[4 + NBD_MAX_STRING];
    size_t len = strlen(name);

    nbd_put_be32(buf, id);
    memcpy(buf + 4, name, len);
    return nbd_send_option_reply(conn, opt, NBD_REP_META_CONTEXT, buf, (uint32_t)(4 + len), err);
}

/* The metadata contexts a LIST or SET_META_CONTEXT request selects. */
struct nbd_contexts {
    bool alloc, depth, bitmap;
};

static bool
nbd_query_is(const char *q, uint32_t len, const char *name)
{
    return len == strlen(name) && memcmp(q, name, len) == 0;
}

/*
 * Which of our contexts a query names. A bare namespace ("base:", "qemu:",
 * "qemu:dirty-bitmap:") selects all it holds, but only for LIST, as the
 * spec allows and qemu-nbd does.
 */
static void
nbd_match_query(const struct vimg_nbd_server *server, bool is_list, const char *q,
                uint32_t len, struct nbd_contexts *c)
{
    bool has_depth = server->exp.has_allocation_depth, has_bitmap = server->bitmap_context;

    if (nbd_query_is(q, len, NBD_CONTEXT_ALLOCATION) || (is_list && nbd_query_is(q, len, "base:")))
        c->alloc = true;
    if (is_list && nbd_query_is(q, len, "qemu:")) {
        c->depth |= has_depth;
        c->bitmap |= has_bitmap;
    }
    if (has_depth && nbd_query_is(q, len, NBD_CONTEXT_DEPTH))
        c->depth = true;
    if (has_bitmap && ((is_list && nbd_query_is(q, len, NBD_CONTEXT_BITMAP_PREFIX)) ||
                       nbd_query_is(q, len, server->bitmap_context)))
        c->bitmap = true;
}

/* Parses the queries of LIST/SET_META_CONTEXT into the contexts they select. */
static int
nbd_parse_meta_queries(struct nbd_conn *conn, const struct nbd_option *o,
                       struct nbd_contexts *c, struct vimg_error *err)
{
    const struct vimg_nbd_server *server = conn->server;
    bool is_list = o->opt == NBD_OPT_LIST_META_CONTEXT;
    const char *name, *q;
    uint32_t name_len, n_queries, q_len, pos = 0;

    memset(c, 0, sizeof(*c));
    /* Listing needs no structured replies (qemu-nbd answers it without). */
    if (!conn->has_structured && !is_list)
        return nbd_send_option_error(conn, o->opt, NBD_REP_ERR_INVALID, err,
                                     "structured replies not negotiated");
    if (!nbd_take_string(o, &pos, &name, &name_len) || o->len - pos < 4)
        return nbd_send_option_error(conn, o->opt, NBD_REP_ERR_INVALID, err,
                                     "request is too short or its name too long");
    n_queries = nbd_get_be32(o->data + pos);
    pos += 4;
    for (uint32_t i = 0; i < n_queries; i++) {
        if (!nbd_take_string(o, &pos, &q, &q_len))
            return nbd_send_option_error(conn, o->opt, NBD_REP_ERR_INVALID, err,
                                         "query %u does not fit in the request", i);
        nbd_match_query(server, is_list, q, q_len, c);
    }
    if (pos != o->len)
        return nbd_send_option_error(conn, o->opt, NBD_REP_ERR_INVALID, err,
                                     "request has %u trailing bytes", o->len - pos);
    if (!nbd_name_matches(server, name, name_len))
        return nbd_send_option_error(conn, o->opt, NBD_REP_ERR_UNKNOWN, err,
                                     "export '%.*s' not present", (int)name_len, name);
    /* With no query, LIST_META_CONTEXT lists everything. */
    if (n_queries == 0 && is_list) {
        c->alloc = true;
        c->depth = server->exp.has_allocation_depth;
        c->bitmap = server->bitmap_context;
    }
    return 1;
}

static int
nbd_opt_meta_context(struct nbd_conn *conn, const struct nbd_option *o, struct vimg_error *err)
{
    bool is_set = o->opt == NBD_OPT_SET_META_CONTEXT;
    struct nbd_contexts c;
    int ret = nbd_parse_meta_queries(conn, o, &c, err);

    if (ret <= 0)
        return ret;
    if (is_set) {
        conn->has_allocation = c.alloc;
        conn->has_depth = c.depth;
        conn->has_bitmap = c.bitmap;
    }
    /* LIST replies carry id 0, which the spec reserves for them. */
    if (c.alloc && (ret = nbd_send_context(conn, o->opt, is_set ? NBD_CONTEXT_ID_ALLOCATION : 0,
                                           NBD_CONTEXT_ALLOCATION, err)) < 0)
        return ret;
    if (c.depth && (ret = nbd_send_context(conn, o->opt, is_set ? NBD_CONTEXT_ID_DEPTH : 0,
                                           NBD_CONTEXT_DEPTH, err)) < 0)
        return ret;
    if (c.bitmap && (ret = nbd_send_context(conn, o->opt, is_set ? NBD_CONTEXT_ID_BITMAP : 0,
                                            conn->server->bitmap_context, err)) < 0)
        return ret;
    return nbd_send_option_reply(conn, o->opt, NBD_REP_ACK, NULL, 0, err);
}

static int
nbd_opt_starttls(struct nbd_conn *conn, const struct nbd_option *o, struct vimg_error *err)
{
    int ret;

    if (!conn->server->tls)
        return nbd_send_option_error(conn, o->opt, NBD_REP_ERR_POLICY, err,
                                     "TLS not configured");
    if (conn->tls)
        return nbd_send_option_error(conn, o->opt, NBD_REP_ERR_INVALID, err,
                                     "TLS already enabled");
    if (o->len != 0)
        return nbd_send_option_error(conn, o->opt, NBD_REP_ERR_INVALID, err,
                                     "request length %u is not zero", o->len);
    if ((ret = nbd_send_option_reply(conn, o->opt, NBD_REP_ACK, NULL, 0, err)) < 0)
        return ret;
    return nbd_tls_start(conn, err);
}

/* Before STARTTLS on a server that requires TLS; same returns as nbd_handle_option. */
static int
nbd_handle_option_before_tls(struct nbd_conn *conn, const struct nbd_option *o,
                             struct vimg_error *err)
{
    switch (o->opt) {
    case NBD_OPT_STARTTLS:
        return nbd_opt_starttls(conn, o, err);
    case NBD_OPT_ABORT:
        nbd_send_option_reply(conn, o->opt, NBD_REP_ACK, NULL, 0, NULL);
        return NBD_HANDSHAKE_END;
    case NBD_OPT_EXPORT_NAME:
        return vimg_error_set(err, EPERM, "Option 0x%x not permitted before TLS", o->opt);
    default:
        return nbd_send_option_error(conn, o->opt, NBD_REP_ERR_TLS_REQD, err,
                                     "Option 0x%x not permitted before TLS", o->opt);
    }
}

/* Returns NBD_HANDSHAKE_TRANSMIT or _END when negotiation is over, 0 to go on, or -errno. */
static int
nbd_handle_option(struct nbd_conn *conn, const struct nbd_option *o, struct vimg_error *err)
{
    if (!conn->is_fixed && o->opt != NBD_OPT_EXPORT_NAME)
        return vimg_error_set(err, EPROTO, "option %u from a client without fixed newstyle "
                              "negotiation", o->opt);
    if (conn->server->tls && !conn->tls)
        return nbd_handle_option_before_tls(conn, o, err);
    switch (o->opt) {
    case NBD_OPT_EXPORT_NAME:
        return nbd_opt_export_name(conn, o, err);
    case NBD_OPT_ABORT:
        /* The client may already be gone; a failed ACK changes nothing. */
        nbd_send_option_reply(conn, o->opt, NBD_REP_ACK, NULL, 0, NULL);
        return NBD_HANDSHAKE_END;
    case NBD_OPT_LIST:
        return nbd_opt_list(conn, o, err);
    case NBD_OPT_STARTTLS:
        return nbd_opt_starttls(conn, o, err);
    case NBD_OPT_INFO:
    case NBD_OPT_GO:
        return nbd_opt_info_go(conn, o, err);
    case NBD_OPT_STRUCTURED_REPLY:
        return nbd_opt_structured_reply(conn, o, err);
    case NBD_OPT_LIST_META_CONTEXT:
    case NBD_OPT_SET_META_CONTEXT:
        return nbd_opt_meta_context(conn, o, err);
    default:
        return nbd_send_option_error(conn, o->opt, NBD_REP_ERR_UNSUP, err,
                                     "option %u is not supported", o->opt);
    }
}

static int
nbd_read_option(struct nbd_conn *conn, struct nbd_option *o, struct vimg_error *err)
{
    uint8_t hdr[16];
    int ret;

    if ((ret = nbd_recv_full(conn, hdr, sizeof(hdr), true, err)) < 0)
        return ret;
    if (nbd_get_be64(hdr) != NBD_OPTS_MAGIC)
        return vimg_error_set(err, EPROTO, "bad option magic 0x%016llx",
                              (unsigned long long)nbd_get_be64(hdr));
    o->opt = nbd_get_be32(hdr + 8);
    o->len = nbd_get_be32(hdr + 12);
    if (o->len > NBD_MAX_OPTION_LEN)
        return vimg_error_set(err, EPROTO, "option %u length %u is over the limit (%u)",
                              o->opt, o->len, NBD_MAX_OPTION_LEN);
    if (!(o->data = malloc(o->len ? o->len : 1)))
        return vimg_error_set(err, ENOMEM, "Out of memory");
    if ((ret = nbd_recv_full(conn, o->data, o->len, false, err)) < 0) {
        free(o->data);
        o->data = NULL;
    }
    return ret;
}

int
nbd_handshake(struct nbd_conn *conn, struct vimg_error *err)
{
    uint8_t hello[18], client[4];
    uint32_t client_flags;
    int ret;

    nbd_put_be64(hello, NBD_MAGIC);
    nbd_put_be64(hello + 8, NBD_OPTS_MAGIC);
    nbd_put_be16(hello + 16, NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES);
    if ((ret = nbd_send_full(conn, hello, sizeof(hello), err)) < 0 ||
        (ret = nbd_recv_full(conn, client, sizeof(client), false, err)) < 0)
        return ret;
    client_flags = nbd_get_be32(client);
    if (client_flags & ~(NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES))
        return vimg_error_set(err, EPROTO, "unknown client flags 0x%x", client_flags);
    conn->is_fixed = client_flags & NBD_FLAG_C_FIXED_NEWSTYLE;
    conn->no_zeroes = client_flags & NBD_FLAG_C_NO_ZEROES;
    for (;;) {
        struct nbd_option o = { 0 };
        if ((ret = nbd_read_option(conn, &o, err)) < 0)
            return ret == -ECONNRESET ? NBD_HANDSHAKE_END : ret;
        ret = nbd_handle_option(conn, &o, err);
        free(o.data);
        if (ret != 0)
            return ret;
    }
}
