/*
 * The nbd protocol: images served by an NBD server, read and written through
 * libnbd. Spec: SPECS.md "NBD protocol" (doc/proto.md) and "NBD URIs"
 * (doc/uri.md); filenames and messages follow qemu-img's nbd driver:
 *   nbd://HOST[:PORT][/EXPORT]          nbd+tcp:// likewise
 *   nbd+unix:///[EXPORT]?socket=PATH
 *   nbd:HOST:PORT[:exportname=EXPORT]   nbd:unix:PATH[:exportname=EXPORT]
 * and the --image-opts keys server.type, server.host, server.port,
 * server.path, export (or the older host, port, path), tls-creds (the id
 * of a tls-creds-x509 or tls-creds-psk object with endpoint=client) and
 * tls-hostname: the name an x509 server certificate must carry, by default
 * the TCP host; over a unix socket there is none unless given, which fails
 * as in qemu-img (nbd/libnbd-client.c does x509 TLS, libnbd PSK).
 *
 * libnbd serialises the blocking calls made on one handle, so parallel
 * callers take a handle each from a small pool: one connection, or up to
 * NBD_MAX_CONNS when the server allows multi-conn.
 *
 * The driver's callbacks are named nbd_client_<op>, not nbd_<op>: libnbd's
 * API already owns nbd_flush, nbd_close and their like.
 *
 * An export cannot be created or resized: create (qemu-img's fallback for
 * protocols without one) opens it, checks that it is large enough and zeroes
 * its first 512 bytes; truncate accepts only the export's size, or less when
 * inexact.
 *
 * Leaves out: reconnection
 * (reconnect-delay and open-timeout are accepted and ignored), dirty bitmaps
 * (x-dirty-bitmap).
 */
#include <errno.h>
#include <inttypes.h>
#include <libnbd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <vimg/object.h>

#include "core/driver.h"
#include "nbd/libnbd-client.h"

#define NBD_DEFAULT_PORT     "10809"
#define NBD_MAX_CONNS        4
#define NBD_MAX_REQUEST      (32u << 20)    /* the largest read or write we send */
#define NBD_MAX_RANGE        (1u << 30)     /* the largest zero/trim/status range */
#define NBD_STATE_HOLE       0x1u           /* base:allocation flags */
#define NBD_STATE_ZERO       0x2u
#define NBD_CONTEXT_ALLOC    "base:allocation"

struct nbd_addr {
    bool is_unix;
    char *host;                 /* inet */
    char *port;                 /* inet, as text for getaddrinfo */
    char *path;                 /* unix */
    char *export_name;
    char *tls_hostname;         /* NULL: the TCP host, or none over a unix socket */
    bool has_tls;
    struct vimg_tls_creds tls;  /* when has_tls */
};

struct nbd_state {
    struct nbd_addr addr;
    uint64_t size;
    uint32_t min_block;
    bool can_multi_conn, can_fua, can_flush, can_trim, can_zero, can_fast_zero;
    bool has_allocation;        /* base:allocation was negotiated */
    pthread_mutex_t lock;       /* protects handles, is_busy, n_handles */
    pthread_cond_t cond;        /* a handle became free */
    struct nbd_handle *handles[NBD_MAX_CONNS];
    struct vimg_nbd_relay *relays[NBD_MAX_CONNS];  /* x509 TLS of each handle, or NULL */
    bool is_busy[NBD_MAX_CONNS];
    unsigned n_handles;
};

static const char *const nbd_protocols[] = { "nbd", NULL };

static void
nbd_addr_free(struct nbd_addr *a)
{
    free(a->host);
    free(a->port);
    vimg_tls_creds_release(&a->tls);
    free(a->path);
    free(a->export_name);
    free(a->tls_hostname);
    memset(a, 0, sizeof(*a));
}

/* host[:port] of a URI authority; IPv6 hosts in brackets. */
static int
nbd_parse_authority(const char *auth, size_t len, struct nbd_addr *a)
{
    const char *port, *host;
    size_t host_len;
    unsigned long n = 0;

    if (vimg_uri_split_host(auth, len, &host, &host_len, &port) < 0 || host_len == 0)
        return -1;
    if (port) {
        for (const char *p = port; p < auth + len; p++) {
            if (*p < '0' || *p > '9' || n > 65535)
                return -1;
            n = n * 10 + (unsigned long)(*p - '0');
        }
        if (n > 65535)
            return -1;
    }
    a->host = strndup(host, host_len);
    /* Port 0 means the default, as an absent one does. */
    if (n == 0 || asprintf(&a->port, "%lu", n) < 0)
        a->port = n == 0 ? strdup(NBD_DEFAULT_PORT) : NULL;
    return a->host && a->port ? 0 : -1;
}

/* nbd[+tcp|+unix]://...: anything QEMU would not accept is "No valid URL specified". */
static int
nbd_parse_uri(const char *rest, bool is_unix, struct nbd_addr *a, struct vimg_error *err)
{
    const char *auth = rest, *path, *query;
    size_t auth_len = strcspn(auth, "/?#");

    path = auth + auth_len;
    query = strchr(path, '?');
    if (strchr(path, '#'))
        goto invalid;
    a->is_unix = is_unix;
    a->export_name = *path == '/' ? vimg_uri_decode(path + 1, (query ? (size_t)(query - path)
                                                                     : strlen(path)) - 1)
                                  : strdup("");
    if (!a->export_name)
        goto invalid;
    if (is_unix) {
        if (auth_len != 0 || !query || strncmp(query + 1, "socket=", 7) != 0 ||
            strchr(query + 1, '&'))
            goto invalid;
        a->path = vimg_uri_decode(query + 8, strlen(query + 8));
        if (!a->path)
            goto invalid;
        return 0;
    }
    if (query || nbd_parse_authority(auth, auth_len, a) < 0)
        goto invalid;
    return 0;
invalid:
    nbd_addr_free(a);
    return vimg_error_set(err, EINVAL, "No valid URL specified");
}

/* nbd:unix:PATH[:exportname=NAME] and nbd:HOST:PORT[:exportname=NAME]. */
static int
nbd_parse_legacy(const char *spec, struct nbd_addr *a, struct vimg_error *err)
{
    const char *ex = strstr(spec, ":exportname=");
    size_t len = ex ? (size_t)(ex - spec) : strlen(spec);
    const char *colon;

    if (len == 0 || (ex && ex[12] == '\0'))
        return vimg_error_set(err, EINVAL, "NBD server address missing");
    a->export_name = strdup(ex ? ex + 12 : "");
    if (strncmp(spec, "unix:", 5) == 0) {
        a->is_unix = true;
        a->path = strndup(spec + 5, len - 5);
    } else {
        colon = NULL;
        for (const char *p = spec; p < spec + len; p++)
            if (*p == ':')
                colon = p;
        if (!colon || colon == spec + len - 1) {
            nbd_addr_free(a);
            return vimg_error_set(err, EINVAL, "error parsing address '%.*s'", (int)len, spec);
        }
        if (spec[0] == '[' && colon > spec + 1 && colon[-1] == ']')
            a->host = strndup(spec + 1, (size_t)(colon - spec - 2));
        else
            a->host = strndup(spec, (size_t)(colon - spec));
        a->port = strndup(colon + 1, (size_t)(spec + len - colon - 1));
    }
    if (!a->export_name || (!a->path && (!a->host || !a->port))) {
        nbd_addr_free(a);
        return vimg_error_set(err, ENOMEM, "Out of memory");
    }
    return 0;
}

static int
nbd_parse_filename(const char *name, struct nbd_addr *a, struct vimg_error *err)
{
    size_t scheme_len = strcspn(name, ":");

    if (strncmp(name + scheme_len, "://", 3) != 0)
        return nbd_parse_legacy(name + 4, a, err);
    if (scheme_len == 3 || (scheme_len == 7 && strncmp(name, "nbd+tcp", 7) == 0))
        return nbd_parse_uri(name + scheme_len + 3, false, a, err);
    if (scheme_len == 8 && strncmp(name, "nbd+unix", 8) == 0)
        return nbd_parse_uri(name + scheme_len + 3, true, a, err);
    return vimg_error_set(err, EINVAL, "Unknown protocol '%.*s'", (int)scheme_len, name);
}

static int
nbd_dup_opt(struct vimg_opts *opts, const char *key, char **out, struct vimg_error *err)
{
    const char *v = vimg_opts_get(opts, key);

    if (!v)
        return vimg_error_set(err, EINVAL, "Parameter '%s' is missing", strrchr(key, '.') ?
                              strrchr(key, '.') + 1 : key);
    if (!(*out = strdup(v)))
        return vimg_error_set(err, ENOMEM, "Out of memory");
    return 0;
}

/* The "server" dictionary of --image-opts (a SocketAddress), or host/port/path. */
static int
nbd_parse_server_opts(struct vimg_opts *opts, struct nbd_addr *a, struct vimg_error *err)
{
    static const char *const types[] = { "inet", "unix", NULL };
    bool has_server = vimg_opts_has(opts, "server");
    bool has_legacy = vimg_opts_has(opts, "host") || vimg_opts_has(opts, "port") ||
                      vimg_opts_has(opts, "path");
    int type, ret;

    vimg_opts_get_dict(opts, "server");
    if (has_server && has_legacy)
        return vimg_error_set(err, EINVAL,
                              "Cannot use 'server' and path/host/port at the same time");
    if (has_legacy) {
        if (vimg_opts_has(opts, "path")) {
            a->is_unix = true;
            return nbd_dup_opt(opts, "path", &a->path, err);
        }
        if ((ret = nbd_dup_opt(opts, "host", &a->host, err)) < 0)
            return ret;
        a->port = strdup(vimg_opts_has(opts, "port") ? vimg_opts_get(opts, "port")
                                                     : NBD_DEFAULT_PORT);
        return a->port ? 0 : vimg_error_set(err, ENOMEM, "Out of memory");
    }
    if (!has_server)
        return vimg_error_set(err, EINVAL, "NBD server address missing");
    if (!vimg_opts_has(opts, "server.type"))
        return vimg_error_set(err, EINVAL, "Parameter 'type' is missing");
    if ((ret = vimg_opts_get_enum(opts, "server.type", types, 0, &type, err)) < 0)
        return vimg_error_set(err, EINVAL, "Parameter 'type' does not accept value '%s'",
                              vimg_opts_peek(opts, "server.type"));
    a->is_unix = type == 1;
    if (a->is_unix) {
        if (vimg_opts_has(opts, "server.host"))
            return vimg_error_set(err, EINVAL, "Parameter 'host' is unexpected");
        return nbd_dup_opt(opts, "server.path", &a->path, err);
    }
    if (vimg_opts_has(opts, "server.path"))
        return vimg_error_set(err, EINVAL, "Parameter 'path' is unexpected");
    if ((ret = nbd_dup_opt(opts, "server.host", &a->host, err)) < 0)
        return ret;
    return nbd_dup_opt(opts, "server.port", &a->port, err);
}

static int
nbd_connect_unix_fd(const struct nbd_addr *a, struct vimg_error *err)
{
    struct sockaddr_un sun = { .sun_family = AF_UNIX };
    int fd, e;

    if (strlen(a->path) >= sizeof(sun.sun_path))
        return vimg_error_set(err, EINVAL, "UNIX socket path '%s' is too long", a->path);
    memcpy(sun.sun_path, a->path, strlen(a->path));
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return vimg_error_set(err, errno, "Failed to create socket: %s", strerror(errno));
    if (connect(fd, (struct sockaddr *)&sun, sizeof(sun)) < 0) {
        e = errno;
        close(fd);
        return vimg_error_set(err, e, "Failed to connect to '%s': %s", a->path, strerror(e));
    }
    return fd;
}


/* libnbd's failure in the negotiation, or qemu-img's words when TLS underneath failed. */
static int
nbd_libnbd_fail(const struct vimg_nbd_relay *relay, struct vimg_error *err)
{
    int e = vimg_nbd_relay_recv_errno(relay);

    if (e)
        return vimg_error_set(err, e, "Failed to read option reply: Cannot read from TLS "
                              "channel: %s", strerror(e));
    return vimg_error_set(err, nbd_get_errno() ? nbd_get_errno() : EIO, "%s", nbd_get_error());
}

static int
nbd_go(struct nbd_handle *h, const struct nbd_addr *a, struct vimg_nbd_relay **relay,
       struct vimg_error *err)
{
    char server_msg[VIMG_ERROR_MSG_MAX] = "";
    nbd_debug_callback cb = { .callback = vimg_nbd_client_debug_capture,
                              .user_data = server_msg };
    int fd, ret = 0;

    *relay = NULL;
    fd = a->is_unix ? nbd_connect_unix_fd(a, err) : vimg_tcp_connect(a->host, a->port, err);
    if (fd < 0)
        return fd;
    /* Buffers are filled by the server; libnbd need not clear them first. */
    if (nbd_set_export_name(h, a->export_name) < 0 || nbd_set_opt_mode(h, true) < 0 ||
        nbd_set_pread_initialize(h, false) < 0 ||
        nbd_add_meta_context(h, NBD_CONTEXT_ALLOC) < 0 ||
        nbd_set_debug_callback(h, cb) < 0 || nbd_set_debug(h, true) < 0) {
        close(fd);
        return vimg_error_set(err, nbd_get_errno() ? nbd_get_errno() : EIO, "%s",
                              nbd_get_error());
    }
    ret = vimg_nbd_client_connect(h, fd, a->has_tls ? &a->tls : NULL,
                                  a->tls_hostname ? a->tls_hostname : a->host, relay, err);
    if (ret < 0)
        return ret;
    if (ret == 1)
        return nbd_libnbd_fail(*relay, err);
    if (nbd_opt_go(h) < 0) {
        int e = nbd_get_errno() ? nbd_get_errno() : EIO;
        /* Two lines, as qemu-img prints them: the drop-in contract wins over one-line. */
        if (e == ENOENT && server_msg[0])
            ret = vimg_error_set(err, e, "Requested export not available\nserver reported: %s",
                                 server_msg);
        else if (e == ENOENT)
            ret = vimg_error_set(err, e, "Requested export not available");
        else if (e == ENOTSUP && !a->has_tls)
            /* libnbd falls back to EXPORT_NAME when GO is unknown: this is TLS_REQD. */
            ret = vimg_error_set(err, e, "TLS negotiation required before option 7 (go)\n"
                                 "Did you forget a valid tls-creds?%s%s",
                                 server_msg[0] ? "\nserver reported: " : "", server_msg);
        else
            ret = nbd_libnbd_fail(*relay, err);
        /* Leave politely, so that the server does not log a broken negotiation. */
        if (nbd_aio_is_negotiating(h) == 1)
            nbd_opt_abort(h);
    }
    nbd_set_debug(h, false);
    nbd_clear_debug_callback(h);
    return ret;
}

static struct nbd_handle *
nbd_new_connection(const struct nbd_addr *a, struct vimg_nbd_relay **relay,
                   struct vimg_error *err)
{
    struct nbd_handle *h = nbd_create();

    *relay = NULL;
    if (!h) {
        vimg_error_set(err, ENOMEM, "%s", nbd_get_error());
        return NULL;
    }
    if (nbd_go(h, a, relay, err) < 0) {
        nbd_close(h);
        vimg_nbd_relay_free(*relay);
        *relay = NULL;
        return NULL;
    }
    return h;
}

static void
nbd_end_connection(struct nbd_handle *h, struct vimg_nbd_relay *relay)
{
    nbd_shutdown(h, 0);
    nbd_close(h);
    vimg_nbd_relay_free(relay);
}

/* Takes a free handle, opening another connection when the server allows it. */
static int
nbd_acquire(struct nbd_state *s, struct vimg_error *err)
{
    struct nbd_handle *h;
    struct vimg_nbd_relay *relay;
    unsigned i;

    pthread_mutex_lock(&s->lock);
    for (;;) {
        for (i = 0; i < s->n_handles; i++) {
            if (!s->is_busy[i]) {
                s->is_busy[i] = true;
                pthread_mutex_unlock(&s->lock);
                return (int)i;
            }
        }
        if (s->can_multi_conn && s->n_handles < NBD_MAX_CONNS)
            break;
        pthread_cond_wait(&s->cond, &s->lock);
    }
    i = s->n_handles++;
    s->is_busy[i] = true;
    pthread_mutex_unlock(&s->lock);
    h = nbd_new_connection(&s->addr, &relay, err);
    pthread_mutex_lock(&s->lock);
    s->handles[i] = h;
    s->relays[i] = relay;
    if (!h)
        s->is_busy[i] = true;   /* stays reserved: a failed slot is never used again */
    pthread_mutex_unlock(&s->lock);
    return h ? (int)i : -EIO;
}

static void
nbd_release(struct nbd_state *s, int i)
{
    pthread_mutex_lock(&s->lock);
    s->is_busy[i] = false;
    pthread_cond_signal(&s->cond);
    pthread_mutex_unlock(&s->lock);
}

static int
nbd_io_error(struct vimg_error *err)
{
    int e = nbd_get_errno();

    if (e <= 0)
        e = EIO;
    return vimg_error_set(err, e, "%s", strerror(e));
}

static int
nbd_open_flags(struct vimg_node *node, struct nbd_handle *h, unsigned flags,
               struct vimg_error *err)
{
    struct nbd_state *s = node->state;
    int64_t size = nbd_get_size(h), max, min;

    if (size < 0)
        return vimg_error_set(err, EIO, "%s", nbd_get_error());
    if ((flags & VIMG_OPEN_RDWR) && nbd_is_read_only(h) == 1)
        /* qemu-img's words: the server refused what the open asked for. */
        return vimg_error_set(err, EACCES, "Could not open image: %s", strerror(EACCES));
    s->size = (uint64_t)size;
    s->can_multi_conn = nbd_can_multi_conn(h) == 1;
    s->can_fua = nbd_can_fua(h) == 1;
    s->can_flush = nbd_can_flush(h) == 1;
    s->can_trim = nbd_can_trim(h) == 1;
    s->can_zero = nbd_can_zero(h) == 1;
    s->can_fast_zero = nbd_can_fast_zero(h) == 1;
    s->has_allocation = nbd_can_meta_context(h, NBD_CONTEXT_ALLOC) == 1;
    min = nbd_get_block_size(h, LIBNBD_SIZE_MINIMUM);
    max = nbd_get_block_size(h, LIBNBD_SIZE_MAXIMUM);
    s->min_block = min > 1 && min <= 65536 ? (uint32_t)min : 1;
    node->request_alignment = s->min_block;
    node->max_transfer = max > 0 && max < NBD_MAX_REQUEST ? (uint64_t)max : NBD_MAX_REQUEST;
    node->max_transfer -= node->max_transfer % s->min_block;
    return 0;
}

/*
 * The name qemu-img prints for the node: nbd://HOST:PORT[/EXPORT] or
 * nbd+unix://[/EXPORT]?socket=PATH.
 */
static int
nbd_set_filename(struct vimg_node *node, const struct nbd_addr *a, struct vimg_error *err)
{
    char *name;
    bool has_export = a->export_name[0] != '\0';
    int r;

    if (a->is_unix)
        r = asprintf(&name, "nbd+unix://%s%s?socket=%s", has_export ? "/" : "", a->export_name,
                     a->path);
    else
        r = asprintf(&name, "nbd://%s:%s%s%s", a->host, a->port, has_export ? "/" : "",
                     a->export_name);
    if (r < 0)
        return vimg_error_set(err, ENOMEM, "Out of memory");
    free(node->filename);
    node->filename = name;
    return 0;
}

static int
nbd_read_opts(struct vimg_opts *opts, struct nbd_addr *a, struct vimg_error *err)
{
    const char *filename = vimg_opts_get(opts, "filename");
    const char *tls = vimg_opts_get(opts, "tls-creds");
    const char *export_name = vimg_opts_get(opts, "export");
    uint64_t n;
    int ret;

    const char *tls_hostname = vimg_opts_get(opts, "tls-hostname");
    if ((ret = vimg_opts_get_number(opts, "reconnect-delay", 0, &n, err)) < 0 ||
        (ret = vimg_opts_get_number(opts, "open-timeout", 0, &n, err)) < 0)
        return ret;
    if (filename && strcmp(filename, "nbd") != 0)
        ret = nbd_parse_filename(filename, a, err);
    else
        ret = nbd_parse_server_opts(opts, a, err);
    if (ret < 0)
        return ret;
    if (export_name) {
        free(a->export_name);
        a->export_name = strdup(export_name);
    } else if (!a->export_name) {
        a->export_name = strdup("");
    }
    if (!a->export_name || (tls_hostname && !(a->tls_hostname = strdup(tls_hostname))))
        return vimg_error_set(err, ENOMEM, "Out of memory");
    if (!tls)
        return 0;
    if ((ret = vimg_tls_creds_lookup(tls, &a->tls, err)) < 0)
        return ret;
    a->has_tls = true;
    if (a->tls.is_server)
        return vimg_error_set(err, EINVAL, "Expected TLS credentials for a client endpoint");
    return 0;
}

static int
nbd_client_open(struct vimg_node *node, struct vimg_opts *opts, unsigned flags,
         struct vimg_error *err)
{
    struct nbd_state *s = node->state;
    int ret;

    pthread_mutex_init(&s->lock, NULL);
    pthread_cond_init(&s->cond, NULL);
    if ((ret = nbd_read_opts(opts, &s->addr, err)) < 0)
        goto fail;
    if ((ret = nbd_set_filename(node, &s->addr, err)) < 0)
        goto fail;
    s->handles[0] = nbd_new_connection(&s->addr, &s->relays[0], err);
    if (!s->handles[0]) {
        ret = -err->errnum;
        goto fail;
    }
    s->n_handles = 1;
    if ((ret = nbd_open_flags(node, s->handles[0], flags, err)) < 0)
        goto fail;
    return 0;
fail:
    if (s->handles[0])
        nbd_end_connection(s->handles[0], s->relays[0]);
    nbd_addr_free(&s->addr);
    pthread_cond_destroy(&s->cond);
    pthread_mutex_destroy(&s->lock);
    return ret;
}

static void
nbd_client_close(struct vimg_node *node)
{
    struct nbd_state *s = node->state;

    for (unsigned i = 0; i < s->n_handles; i++)
        if (s->handles[i])
            nbd_end_connection(s->handles[i], s->relays[i]);
    nbd_addr_free(&s->addr);
    pthread_cond_destroy(&s->cond);
    pthread_mutex_destroy(&s->lock);
}

static int64_t
nbd_client_length(struct vimg_node *node, struct vimg_error *err)
{
    struct nbd_state *s = node->state;

    (void)err;
    return (int64_t)s->size;
}

/* One contiguous buffer for an iovec: the first element itself when it covers it all. */
static void *
nbd_flat_buffer(const struct iovec *iov, int n_iov, uint64_t bytes, bool *is_bounce)
{
    *is_bounce = !(n_iov == 1 && iov[0].iov_len >= bytes);
    return *is_bounce ? malloc(bytes ? bytes : 1) : iov[0].iov_base;
}

static int
nbd_client_preadv(struct vimg_node *node, uint64_t offset, uint64_t bytes, const struct iovec *iov,
           int n_iov, unsigned flags, struct vimg_error *err)
{
    struct nbd_state *s = node->state;
    bool is_bounce;
    char *buf = nbd_flat_buffer(iov, n_iov, bytes, &is_bounce);
    int i, ret = 0;

    (void)flags;
    if (!buf)
        return vimg_error_set(err, ENOMEM, "Out of memory");
    if ((i = nbd_acquire(s, err)) < 0) {
        ret = i;
        goto out;
    }
    if (nbd_pread(s->handles[i], buf, bytes, offset, 0) < 0)
        ret = nbd_io_error(err);
    nbd_release(s, i);
    if (ret == 0 && is_bounce) {
        uint64_t done = 0;
        for (int k = 0; k < n_iov && done < bytes; k++) {
            size_t len = iov[k].iov_len < bytes - done ? iov[k].iov_len : (size_t)(bytes - done);
            memcpy(iov[k].iov_base, buf + done, len);
            done += len;
        }
    }
out:
    if (is_bounce)
        free(buf);
    return ret;
}

static int
nbd_client_pwritev(struct vimg_node *node, uint64_t offset, uint64_t bytes,
                   const struct iovec *iov, int n_iov, unsigned flags, struct vimg_error *err)
{
    struct nbd_state *s = node->state;
    bool is_bounce;
    char *buf = nbd_flat_buffer(iov, n_iov, bytes, &is_bounce);
    uint32_t nbd_flags = (flags & VIMG_REQ_FUA) && s->can_fua ? LIBNBD_CMD_FLAG_FUA : 0;
    int i, ret = 0;

    if (!buf)
        return vimg_error_set(err, ENOMEM, "Out of memory");
    if (is_bounce) {
        uint64_t done = 0;
        for (int k = 0; k < n_iov && done < bytes; k++) {
            size_t len = iov[k].iov_len < bytes - done ? iov[k].iov_len : (size_t)(bytes - done);
            memcpy(buf + done, iov[k].iov_base, len);
            done += len;
        }
    }
    if ((i = nbd_acquire(s, err)) < 0) {
        ret = i;
        goto out;
    }
    if (nbd_pwrite(s->handles[i], buf, bytes, offset, nbd_flags) < 0)
        ret = nbd_io_error(err);
    /* Without FUA on the wire, a flush gives the same guarantee. */
    else if ((flags & VIMG_REQ_FUA) && !s->can_fua && s->can_flush &&
             nbd_flush(s->handles[i], 0) < 0)
        ret = nbd_io_error(err);
    nbd_release(s, i);
out:
    if (is_bounce)
        free(buf);
    return ret;
}

/* Splits [offset, +bytes) into ranges the 32-bit length field of a request can carry. */
static uint64_t
nbd_range_chunk(const struct nbd_state *s, uint64_t bytes)
{
    uint64_t max = NBD_MAX_RANGE - NBD_MAX_RANGE % s->min_block;

    return bytes < max ? bytes : max;
}

static int
nbd_client_pwrite_zeroes(struct vimg_node *node, uint64_t offset, uint64_t bytes,
                         unsigned flags, struct vimg_error *err)
{
    struct nbd_state *s = node->state;
    uint32_t nbd_flags = 0;
    int i, ret = 0;

    if (!s->can_zero || ((flags & VIMG_REQ_NO_FALLBACK) && !s->can_fast_zero))
        return vimg_error_set(err, ENOTSUP, "%s", strerror(ENOTSUP));
    if (!(flags & VIMG_REQ_MAY_UNMAP))
        nbd_flags |= LIBNBD_CMD_FLAG_NO_HOLE;
    if (flags & VIMG_REQ_NO_FALLBACK)
        nbd_flags |= LIBNBD_CMD_FLAG_FAST_ZERO;
    if ((flags & VIMG_REQ_FUA) && s->can_fua)
        nbd_flags |= LIBNBD_CMD_FLAG_FUA;
    if ((i = nbd_acquire(s, err)) < 0)
        return i;
    while (bytes && ret == 0) {
        uint64_t len = nbd_range_chunk(s, bytes);
        if (nbd_zero(s->handles[i], len, offset, nbd_flags) < 0)
            ret = nbd_io_error(err);
        offset += len;
        bytes -= len;
    }
    nbd_release(s, i);
    return ret;
}

static int
nbd_client_discard(struct vimg_node *node, uint64_t offset, uint64_t bytes,
                   struct vimg_error *err)
{
    struct nbd_state *s = node->state;
    int i, ret = 0;

    if (!s->can_trim)
        return 0;
    if ((i = nbd_acquire(s, err)) < 0)
        return i;
    while (bytes && ret == 0) {
        uint64_t len = nbd_range_chunk(s, bytes);
        if (nbd_trim(s->handles[i], len, offset, 0) < 0)
            ret = nbd_io_error(err);
        offset += len;
        bytes -= len;
    }
    nbd_release(s, i);
    return ret;
}

static int
nbd_client_flush(struct vimg_node *node, struct vimg_error *err)
{
    struct nbd_state *s = node->state;
    int i, ret = 0;

    if (!s->can_flush)
        return 0;
    if ((i = nbd_acquire(s, err)) < 0)
        return i;
    if (nbd_flush(s->handles[i], 0) < 0)
        ret = nbd_io_error(err);
    nbd_release(s, i);
    return ret;
}

struct nbd_extent {
    uint64_t bytes;
    uint32_t flags;
    bool is_set;
};

/* Keeps the first base:allocation extent; others are ignored. */
static int
nbd_extent_capture(void *user_data, const char *metacontext, uint64_t offset,
                   uint32_t *entries, size_t n_entries, int *error)
{
    struct nbd_extent *e = user_data;

    (void)offset;
    (void)error;
    if (e->is_set || strcmp(metacontext, NBD_CONTEXT_ALLOC) != 0 || n_entries < 2)
        return 0;
    e->bytes = entries[0];
    e->flags = entries[1];
    e->is_set = true;
    return 0;
}

static int
nbd_client_block_status(struct vimg_node *node, uint64_t offset, uint64_t bytes,
                        struct vimg_block_status *bs, struct vimg_error *err)
{
    struct nbd_state *s = node->state;
    struct nbd_extent e = { 0 };
    nbd_extent_callback cb = { .callback = nbd_extent_capture, .user_data = &e };
    int i, ret = 0;

    bs->flags = VIMG_BS_DATA | VIMG_BS_ALLOCATED | VIMG_BS_OFFSET_VALID;
    bs->bytes = bytes;
    bs->offset = offset;
    bs->file = node;
    if (!s->has_allocation)
        return 0;
    if ((i = nbd_acquire(s, err)) < 0)
        return i;
    if (nbd_block_status(s->handles[i], nbd_range_chunk(s, bytes), offset, cb, 0) < 0)
        ret = nbd_io_error(err);
    nbd_release(s, i);
    if (ret < 0 || !e.is_set || e.bytes == 0)
        return ret;
    bs->bytes = e.bytes < bytes ? e.bytes : bytes;
    if (e.flags & NBD_STATE_HOLE)
        bs->flags &= ~VIMG_BS_DATA;
    if (e.flags & NBD_STATE_ZERO)
        bs->flags |= VIMG_BS_ZERO;
    return 0;
}

/*
 * An export keeps its size: only "resizing" to it, or to less when inexact,
 * succeeds. The preallocation mode is ignored, as in qemu-img (a qcow2 with
 * preallocation=full is created on an export).
 */
static int
nbd_client_truncate(struct vimg_node *node, uint64_t size, bool is_exact, int prealloc,
                    struct vimg_error *err)
{
    struct nbd_state *s = node->state;

    (void)prealloc;
    if (is_exact && size != s->size)
        return vimg_error_set(err, ENOTSUP, "Cannot resize NBD nodes");
    if (size > s->size)
        return vimg_error_set(err, EINVAL, "Cannot grow NBD nodes");
    return 0;
}

static const struct vimg_opt_desc nbd_create_opts[] = {
    { "preallocation", VIMG_OPT_STRING, "Preallocation mode (allowed values: off)", NULL },
    { "size", VIMG_OPT_SIZE, "Virtual disk size", NULL },
    { NULL, 0, NULL, NULL },
};

/*
 * "Creating" on an export, as qemu-img does for protocols without their own
 * create: open it, check the size fits, and zero the first 512 bytes (even
 * for size 0) so that no old header is probed later.
 */
static int
nbd_client_create(const char *filename, struct vimg_opts *opts, struct vimg_error *err)
{
    static const uint8_t zeros[512];
    struct vimg_node *node;
    const char *mode = vimg_opts_get(opts, "preallocation");
    uint64_t size;
    int prealloc = VIMG_PREALLOC_OFF, ret;

    if ((ret = vimg_opts_get_size(opts, "size", 0, &size, err)) < 0)
        return ret;
    if (mode && (ret = vimg_prealloc_parse(mode, &prealloc, err)) < 0)
        return ret;
    if (prealloc != VIMG_PREALLOC_OFF)
        return vimg_error_set(err, ENOTSUP, "Unsupported preallocation mode '%s'",
                              vimg_prealloc_name(prealloc));
    ret = vimg_open(&node, filename, NULL, NULL, VIMG_OPEN_RDWR | VIMG_OPEN_PROTOCOL, err);
    if (ret < 0) {
        vimg_error_prefix(err, "Protocol driver 'nbd' does not support image creation, and "
                          "opening the image failed: ");
        return ret;
    }
    ret = nbd_client_truncate(node, size, false, prealloc, err);
    if (ret == 0 && (ret = vimg_node_pwrite(node, 0, zeros, sizeof(zeros), 0, err)) < 0)
        vimg_error_prefix(err, "Failed to clear the new image's first sector: ");
    vimg_close(node);
    return ret;
}

const struct vimg_driver vimg_nbd_driver = {
    .name = "nbd",
    .kind = VIMG_DRIVER_PROTOCOL,
    .state_size = sizeof(struct nbd_state),
    .protocols = nbd_protocols,
    .lacks_get_info = true,
    .open = nbd_client_open,
    .close = nbd_client_close,
    .create_opts = nbd_create_opts,
    .create = nbd_client_create,
    .truncate = nbd_client_truncate,
    .preadv = nbd_client_preadv,
    .pwritev = nbd_client_pwritev,
    .pwrite_zeroes = nbd_client_pwrite_zeroes,
    .discard = nbd_client_discard,
    .flush = nbd_client_flush,
    .block_status = nbd_client_block_status,
    .length = nbd_client_length,
};
