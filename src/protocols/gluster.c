/*
 * The gluster protocol: images on a GlusterFS volume, through libgfapi.
 * Filenames and messages follow qemu-img's gluster driver
 * (block-drivers-manual.texi, "GlusterFS disk images"):
 *   gluster[+tcp|+unix|+rdma]://[HOST[:PORT]]/VOLUME/PATH[?socket=SOCKET]
 * and the JSON / dotted keys volume, path, debug (0-9, default 4), logfile
 * (default "-": stderr) and server.N.type=tcp|inet|unix with host and port,
 * or socket (or path) for unix. libgfapi tries the servers in order.
 *
 * libgfapi calls are thread-safe and many may be in flight on one fd, so
 * parallel callers each issue their own blocking call: the convert workers
 * and vimg-nbd's request threads are the thread pool.
 *
 * Leaves out: rdma (falls back to tcp with qemu-img's warning).
 */
#include <errno.h>
#include <fcntl.h>
#include <glusterfs/api/glfs.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <vimg/json.h>

#include "core/driver.h"

#define GLUSTER_DEFAULT_PORT   "24007"
#define GLUSTER_DEBUG_DEFAULT  4
#define GLUSTER_DEBUG_MAX      9
#define GLUSTER_LOGFILE        "-"      /* libgfapi: stderr */
#define GLUSTER_MAX_SERVERS    64

static const char gluster_uri_usage[] =
    "Usage: file=gluster[+transport]://[host[:port]]volume/path[?socket=...]"
    "[,file.debug=N][,file.logfile=/path/filename.log]";
static const char gluster_opts_usage[] =
    "Usage: -drive driver=qcow2,file.driver=gluster,file.volume=testvol,"
    "file.path=/path/a.qcow2[,file.debug=9][,file.logfile=/path/filename.log],"
    "file.server.0.type=inet,file.server.0.host=1.2.3.4,file.server.0.port=24007,"
    "file.server.1.transport=unix,file.server.1.path=/var/run/glusterd.socket ...";

struct gluster_server {
    bool is_unix;
    char *host;                 /* tcp */
    char *port;                 /* tcp */
    char *socket;               /* unix */
    const char *type_name;      /* type as given: "tcp", "inet" or "unix" (dotted form) */
    bool is_path_key;           /* unix: given as "path" rather than "socket" */
};

struct gluster_conf {
    char *volume;
    char *path;
    struct gluster_server servers[GLUSTER_MAX_SERVERS];
    unsigned n_servers;
    int debug;
    char *logfile;
};

struct gluster_state {
    struct gluster_conf conf;
    glfs_t *fs;
    glfs_fd_t *fd;
    bool can_seek_data;         /* SEEK_DATA/SEEK_HOLE answered sensibly once */
};

static const char *const gluster_protocols[] = { "gluster", NULL };

static int
gluster_oom(struct vimg_error *err)
{
    return vimg_error_set(err, ENOMEM, "Out of memory");
}

static void
gluster_conf_free(struct gluster_conf *c)
{
    free(c->volume);
    free(c->path);
    for (unsigned i = 0; i < c->n_servers; i++) {
        free(c->servers[i].host);
        free(c->servers[i].port);
        free(c->servers[i].socket);
    }
    free(c->logfile);
    memset(c, 0, sizeof(*c));
}

static int
gluster_bad_uri(const char *uri, struct vimg_error *err)
{
    return vimg_error_set(err, EINVAL, "invalid URI %s\n%s", uri, gluster_uri_usage);
}

/* HOST[:PORT] or [V6HOST][:PORT] of a tcp URI; an empty authority is localhost. */
static int
gluster_parse_authority(const char *auth, size_t len, struct gluster_server *sv)
{
    const char *end = auth + len, *host, *port;
    size_t host_len;

    if (vimg_uri_split_host(auth, len, &host, &host_len, &port) < 0)
        return -1;
    sv->host = len ? strndup(host, host_len) : strdup("localhost");
    if (port) {
        if (port == end)
            return -1;
        for (const char *p = port; p < end; p++)
            if (*p < '0' || *p > '9')
                return -1;
    }
    sv->port = port ? strndup(port, (size_t)(end - port)) : strdup(GLUSTER_DEFAULT_PORT);
    return sv->host && sv->port ? 0 : -1;
}

/* "/VOLUME/PATH": both parts non-empty. */
static int
gluster_parse_volume_path(const char *p, size_t len, struct gluster_conf *c)
{
    const char *slash;

    if (len < 2 || p[0] != '/')
        return -1;
    p++;
    len--;
    slash = memchr(p, '/', len);
    if (!slash || slash == p || slash + 1 == p + len)
        return -1;
    c->volume = strndup(p, (size_t)(slash - p));
    c->path = strndup(slash + 1, (size_t)(p + len - slash - 1));
    return c->volume && c->path ? 0 : -1;
}

static int
gluster_parse_uri(const char *uri, struct gluster_conf *c, struct vimg_error *err)
{
    const char *rest, *auth, *path, *query;
    struct gluster_server *sv = &c->servers[0];
    size_t auth_len;

    if (strncmp(uri, "gluster://", 10) == 0 || strncmp(uri, "gluster+tcp://", 14) == 0) {
        sv->is_unix = false;
    } else if (strncmp(uri, "gluster+unix://", 15) == 0) {
        sv->is_unix = true;
    } else if (strncmp(uri, "gluster+rdma://", 15) == 0) {
        vimg_warn("warning: rdma feature is not supported, falling back to tcp");
    } else {
        return vimg_error_set(err, EINVAL, "Unknown protocol '%.*s'", (int)strcspn(uri, ":"),
                              uri);
    }
    c->n_servers = 1;
    rest = strstr(uri, "://") + 3;
    auth = rest;
    auth_len = strcspn(auth, "/?#");
    path = auth + auth_len;
    query = strchr(path, '?');
    if (strchr(path, '#') ||
        gluster_parse_volume_path(path, query ? (size_t)(query - path) : strlen(path), c) < 0)
        return gluster_bad_uri(uri, err);
    if (sv->is_unix) {
        if (auth_len || !query || strncmp(query, "?socket=", 8) != 0 || !query[8] ||
            strchr(query, '&'))
            return gluster_bad_uri(uri, err);
        return (sv->socket = strdup(query + 8)) ? 0 : gluster_oom(err);
    }
    if (query || gluster_parse_authority(auth, auth_len, sv) < 0)
        return gluster_bad_uri(uri, err);
    return 0;
}

/* Errors in the server list: the message, the index hint, then the usage. */
static int
gluster_bad_server(unsigned i, struct vimg_error *err, const char *fmt, const char *arg)
{
    char what[256];

    snprintf(what, sizeof(what), fmt, arg);
    return vimg_error_set(err, EINVAL, "%s\nhint: check in 'server' array index '%u'\n%s",
                          what, i, gluster_opts_usage);
}

static int
gluster_parse_server(struct vimg_opts *opts, unsigned i, struct gluster_server *sv,
                     struct vimg_error *err)
{
    char key[64];
    const char *type, *a, *b;

    snprintf(key, sizeof(key), "server.%u.type", i);
    if (!(type = vimg_opts_get(opts, key)))
        return gluster_bad_server(i, err, "Parameter '%s' is missing", "type");
    sv->type_name = strcmp(type, "unix") == 0 ? "unix" : strcmp(type, "tcp") == 0 ? "tcp"
                                                                              : "inet";
    if (strcmp(type, "unix") == 0) {
        sv->is_unix = true;
        snprintf(key, sizeof(key), "server.%u.socket", i);
        a = vimg_opts_get(opts, key);
        snprintf(key, sizeof(key), "server.%u.path", i);
        b = vimg_opts_get(opts, key);
        sv->is_path_key = !a;
        if (!a && !b)
            return gluster_bad_server(i, err, "Parameter '%s' is missing", "path");
        return (sv->socket = strdup(a ? a : b)) ? 0 : gluster_oom(err);
    }
    if (strcmp(type, "tcp") != 0 && strcmp(type, "inet") != 0)
        return gluster_bad_server(i, err, "Parameter 'type' does not accept value '%s'", type);
    snprintf(key, sizeof(key), "server.%u.host", i);
    if (!(a = vimg_opts_get(opts, key)))
        return gluster_bad_server(i, err, "Parameter '%s' is missing", "host");
    snprintf(key, sizeof(key), "server.%u.port", i);
    if (!(b = vimg_opts_get(opts, key)))
        return gluster_bad_server(i, err, "Parameter '%s' is missing", "port");
    sv->host = strdup(a);
    sv->port = strdup(b);
    return sv->host && sv->port ? 0 : gluster_oom(err);
}

static int
gluster_parse_dict(struct vimg_opts *opts, struct gluster_conf *c, struct vimg_error *err)
{
    struct vimg_opts *list = vimg_opts_get_dict(opts, "server");
    const char *volume = vimg_opts_get(opts, "volume"), *path = vimg_opts_get(opts, "path");
    char key[32];
    int ret;

    if (!volume || !path)
        return vimg_error_set(err, EINVAL, "Parameter '%s' is missing\n%s",
                              volume ? "path" : "volume", gluster_opts_usage);
    if (!(c->volume = strdup(volume)) || !(c->path = strdup(path)))
        return gluster_oom(err);
    if (!list || vimg_opts_count(list) == 0)
        return vimg_error_set(err, EINVAL, "Parameter 'server' is missing\n%s",
                              gluster_opts_usage);
    for (unsigned i = 0; i < GLUSTER_MAX_SERVERS; i++) {
        snprintf(key, sizeof(key), "server.%u", i);
        if (!vimg_opts_has(opts, key))
            break;
        vimg_opts_get_dict(opts, key);
        if ((ret = gluster_parse_server(opts, i, &c->servers[i], err)) < 0)
            return ret;
        c->n_servers = i + 1;
    }
    if (c->n_servers == 0)
        return vimg_error_set(err, EINVAL, "Parameter 'server' is missing\n%s",
                              gluster_opts_usage);
    return 0;
}

/* debug and logfile, which the filename forms and creation share. */
static int
gluster_parse_logging(struct vimg_opts *opts, struct gluster_conf *c, struct vimg_error *err)
{
    const char *logfile = vimg_opts_get(opts, "logfile");
    uint64_t debug;
    int ret;

    if ((ret = vimg_opts_get_number(opts, "debug", GLUSTER_DEBUG_DEFAULT, &debug, err)) < 0)
        return ret;
    c->debug = debug > GLUSTER_DEBUG_MAX ? GLUSTER_DEBUG_MAX : (int)debug;
    c->logfile = strdup(logfile ? logfile : GLUSTER_LOGFILE);
    return c->logfile ? 0 : gluster_oom(err);
}

static int
gluster_read_opts(struct vimg_opts *opts, struct gluster_conf *c, struct vimg_error *err)
{
    const char *filename = vimg_opts_get(opts, "filename");
    int ret;

    if ((ret = gluster_parse_logging(opts, c, err)) < 0)
        return ret;
    if (filename && strcmp(filename, "gluster") != 0)
        return gluster_parse_uri(filename, c, err);
    return gluster_parse_dict(opts, c, err);
}

/* The hint qemu-img appends when no server gave the volume: one clause per server. */
static void
gluster_connect_hint(const struct gluster_conf *c, char *buf, size_t size)
{
    size_t len = 0;

    buf[0] = '\0';
    for (unsigned i = 0; i < c->n_servers && len < size; i++) {
        const struct gluster_server *sv = &c->servers[i];
        int n = sv->is_unix ? snprintf(buf + len, size - len, "hint: failed on socket %s ",
                                       sv->socket)
                            : snprintf(buf + len, size - len, "hint: failed on host %s and "
                                       "port %s ", sv->host, sv->port);
        len += n > 0 ? (size_t)n : 0;
    }
}

static int
gluster_connect(glfs_t **out, const struct gluster_conf *c, struct vimg_error *err)
{
    char hint[VIMG_ERROR_MSG_MAX];
    glfs_t *fs = glfs_new(c->volume);
    int e;

    if (!fs)
        return vimg_error_set(err, errno ? errno : ENOMEM, "Gluster connection for volume "
                              "%s, path %s failed to connect", c->volume, c->path);
    for (unsigned i = 0; i < c->n_servers; i++) {
        const struct gluster_server *sv = &c->servers[i];
        int r = sv->is_unix ? glfs_set_volfile_server(fs, "unix", sv->socket, 0)
                            : glfs_set_volfile_server(fs, "tcp", sv->host, atoi(sv->port));
        if (r < 0)
            goto fail;
    }
    if (glfs_set_logging(fs, c->logfile, c->debug) < 0 || glfs_init(fs) < 0)
        goto fail;
    *out = fs;
    return 0;
fail:
    e = errno ? errno : EIO;
    glfs_fini(fs);
    gluster_connect_hint(c, hint, sizeof(hint));
    return vimg_error_set(err, e, "Gluster connection for volume %s, path %s failed to "
                          "connect\n%sPlease refer to gluster logs for more info", c->volume,
                          c->path, hint);
}

/* The key that tells whether two opens may share one connection. */
static char *
gluster_conn_key(const struct gluster_conf *c)
{
    size_t size = 0;
    char *key = NULL;
    FILE *f = open_memstream(&key, &size);

    if (!f)
        return NULL;
    fprintf(f, "%s|%d|%s", c->volume, c->debug, c->logfile);
    for (unsigned i = 0; i < c->n_servers; i++) {
        const struct gluster_server *sv = &c->servers[i];
        if (sv->is_unix)
            fprintf(f, "|unix:%s", sv->socket);
        else
            fprintf(f, "|tcp:%s:%s", sv->host, sv->port);
    }
    if (fclose(f) != 0) {
        free(key);
        return NULL;
    }
    return key;
}

/*
 * The registry of connections to volumes. Shutting a libgfapi connection
 * down takes seconds, so one that nobody uses any more stays until the
 * process exits, for the next open of the same volume (a format's create
 * opens its file several times, convert opens it once more).
 *
 * At exit the connections are not shut down with glfs_fini: every file was
 * closed by then (glfs_close flushes the client's write-behind, so each write
 * has reached the bricks), the kernel closes the sockets, and glfs_fini at
 * exit is where libgfapi 10 was seen to crash now and then (a CI run's
 * `vimg map` died of SIGSEGV after its last file was closed), besides
 * costing about 10 s (glusterfs issue #2606). A connection is shut down only
 * when its open failed (gluster_connect).
 */
struct gluster_conn {
    char *key;
    glfs_t *fs;
    unsigned n_users;
    struct gluster_conn *next;
};

static pthread_mutex_t gluster_conns_lock = PTHREAD_MUTEX_INITIALIZER;
static struct gluster_conn *gluster_conns;      /* protected by gluster_conns_lock */

/* A connection for c, shared with other opens of the same volume through the same servers. */
static int
gluster_conn_get(glfs_t **out, const struct gluster_conf *c, struct vimg_error *err)
{
    char *key = gluster_conn_key(c);
    struct gluster_conn *cn;
    int ret = 0;

    if (!key)
        return gluster_oom(err);
    pthread_mutex_lock(&gluster_conns_lock);
    for (cn = gluster_conns; cn && strcmp(cn->key, key) != 0; cn = cn->next)
        ;
    if (!cn) {
        if (!(cn = calloc(1, sizeof(*cn)))) {
            ret = gluster_oom(err);
            goto out;
        }
        if ((ret = gluster_connect(&cn->fs, c, err)) < 0) {
            free(cn);
            goto out;
        }
        cn->key = key;
        key = NULL;
        cn->next = gluster_conns;
        gluster_conns = cn;
    }
    cn->n_users++;
    *out = cn->fs;
out:
    pthread_mutex_unlock(&gluster_conns_lock);
    free(key);
    return ret;
}

static void
gluster_conn_put(glfs_t *fs)
{
    pthread_mutex_lock(&gluster_conns_lock);
    for (struct gluster_conn *cn = gluster_conns; cn; cn = cn->next)
        if (cn->fs == fs && cn->n_users)
            cn->n_users--;
    pthread_mutex_unlock(&gluster_conns_lock);
}

/* Opened by options, QEMU names the node by a json: of them, keys in QEMU's dictionary order. */
static int
gluster_set_node_name(struct vimg_node *node, const struct gluster_conf *c,
                      struct vimg_error *err)
{
    json_t *desc = json_object();
    char key[64], *text = NULL, *name;

    if (desc) {
        json_object_set_new(desc, "driver", json_string("gluster"));
        json_object_set_new(desc, "volume", json_string(c->volume));
        json_object_set_new(desc, "path", json_string(c->path));
    }
    for (unsigned i = 0; desc && i < c->n_servers; i++) {
        const struct gluster_server *sv = &c->servers[i];
        snprintf(key, sizeof(key), "server.%u.type", i);
        json_object_set_new(desc, key, json_string(sv->type_name));
        if (sv->is_unix) {
            snprintf(key, sizeof(key), "server.%u.%s", i, sv->is_path_key ? "path" : "socket");
            json_object_set_new(desc, key, json_string(sv->socket));
            continue;
        }
        snprintf(key, sizeof(key), "server.%u.host", i);
        json_object_set_new(desc, key, json_string(sv->host));
        snprintf(key, sizeof(key), "server.%u.port", i);
        json_object_set_new(desc, key, json_string(sv->port));
    }
    text = desc ? vimg_json_dumps(desc, false) : NULL;
    json_decref(desc);
    if (!text || asprintf(&name, "json:%s", text) < 0) {
        free(text);
        return gluster_oom(err);
    }
    free(text);
    free(node->filename);
    node->filename = name;
    return 0;
}

static int
gluster_open(struct vimg_node *node, struct vimg_opts *opts, unsigned flags,
             struct vimg_error *err)
{
    struct gluster_state *s = node->state;
    int ret;

    if ((ret = gluster_read_opts(opts, &s->conf, err)) < 0 ||
        (s->conf.servers[0].type_name && (ret = gluster_set_node_name(node, &s->conf, err)) < 0) ||
        (ret = gluster_conn_get(&s->fs, &s->conf, err)) < 0)
        goto fail;
    s->fd = glfs_open(s->fs, s->conf.path, (flags & VIMG_OPEN_RDWR) ? O_RDWR : O_RDONLY);
    if (!s->fd) {
        ret = vimg_error_set_errno(err, errno ? errno : EIO, "Could not open '%s'",
                                   node->filename);
        goto fail;
    }
    s->can_seek_data = true;
    /* Sector granular like qemu-img's gluster node, so that both grow a file alike. */
    node->request_alignment = 512;
    return 0;
fail:
    if (s->fs)
        gluster_conn_put(s->fs);
    s->fs = NULL;
    gluster_conf_free(&s->conf);
    return ret;
}

static void
gluster_close(struct vimg_node *node)
{
    struct gluster_state *s = node->state;

    if (s->fd)
        glfs_close(s->fd);
    if (s->fs)
        gluster_conn_put(s->fs);
    gluster_conf_free(&s->conf);
}

static int
gluster_errno(struct vimg_error *err, const char *what)
{
    int e = errno ? errno : EIO;

    return vimg_error_set(err, e, "%s: %s", what, strerror(e));
}

static int
gluster_preadv(struct vimg_node *node, uint64_t offset, uint64_t bytes,
               const struct iovec *iov, int n_iov, unsigned flags, struct vimg_error *err)
{
    struct gluster_state *s = node->state;
    struct iovec *sub = NULL;
    int n_sub, ret = 0;
    uint64_t done = 0;

    (void)flags;
    while (done < bytes) {
        ssize_t r;
        if (vimg_iov_slice(iov, n_iov, done, bytes - done, &sub, &n_sub) < 0)
            return gluster_oom(err);
        errno = 0;
        r = glfs_preadv(s->fd, sub, n_sub, (off_t)(offset + done), 0);
        free(sub);
        if (r < 0)
            return gluster_errno(err, "gluster read");
        if (r == 0) {
            /* Past the end of the file: zeros, as from a local file. */
            vimg_iov_memset(iov, n_iov, done, bytes - done);
            break;
        }
        done += (uint64_t)r;
    }
    return ret;
}

static int
gluster_pwritev(struct vimg_node *node, uint64_t offset, uint64_t bytes,
                const struct iovec *iov, int n_iov, unsigned flags, struct vimg_error *err)
{
    struct gluster_state *s = node->state;
    struct iovec *sub = NULL;
    int n_sub;
    uint64_t done = 0;

    while (done < bytes) {
        ssize_t r;
        if (vimg_iov_slice(iov, n_iov, done, bytes - done, &sub, &n_sub) < 0)
            return gluster_oom(err);
        errno = 0;
        r = glfs_pwritev(s->fd, sub, n_sub, (off_t)(offset + done), 0);
        free(sub);
        if (r <= 0)
            return gluster_errno(err, "gluster write");
        done += (uint64_t)r;
    }
    if ((flags & VIMG_REQ_FUA) && glfs_fdatasync(s->fd, NULL, NULL) < 0)
        return gluster_errno(err, "gluster fdatasync");
    return 0;
}

static int
gluster_pwrite_zeroes(struct vimg_node *node, uint64_t offset, uint64_t bytes, unsigned flags,
                      struct vimg_error *err)
{
    struct gluster_state *s = node->state;

    (void)flags;
    errno = 0;
    if (glfs_zerofill(s->fd, (off_t)offset, (off_t)bytes) < 0)
        return gluster_errno(err, "gluster zerofill");
    return 0;
}

static int
gluster_discard(struct vimg_node *node, uint64_t offset, uint64_t bytes, struct vimg_error *err)
{
    struct gluster_state *s = node->state;

    errno = 0;
    if (glfs_discard(s->fd, (off_t)offset, (size_t)bytes) < 0) {
        /* A hint the volume may not take: not an error, as with a local file. */
        if (errno == ENOTSUP || errno == EOPNOTSUPP || errno == ENOSYS)
            return 0;
        return gluster_errno(err, "gluster discard");
    }
    return 0;
}

static int
gluster_flush(struct vimg_node *node, struct vimg_error *err)
{
    struct gluster_state *s = node->state;

    errno = 0;
    if (glfs_fsync(s->fd, NULL, NULL) < 0)
        return gluster_errno(err, "gluster fsync");
    return 0;
}

static int64_t
gluster_length(struct vimg_node *node, struct vimg_error *err)
{
    struct gluster_state *s = node->state;
    struct stat st;

    errno = 0;
    if (glfs_fstat(s->fd, &st) < 0)
        return gluster_errno(err, "gluster fstat");
    return (int64_t)st.st_size;
}

static int64_t
gluster_allocated_size(struct vimg_node *node, struct vimg_error *err)
{
    struct gluster_state *s = node->state;
    struct stat st;

    errno = 0;
    if (glfs_fstat(s->fd, &st) < 0)
        return gluster_errno(err, "gluster fstat");
    return (int64_t)st.st_blocks * 512;
}

/*
 * Data and holes from SEEK_DATA / SEEK_HOLE. A volume whose translators do
 * not answer them sensibly (an error other than ENXIO, or an offset before
 * the one asked) reports everything as data from then on.
 */
static int
gluster_block_status(struct vimg_node *node, uint64_t offset, uint64_t bytes,
                     struct vimg_block_status *bs, struct vimg_error *err)
{
    struct gluster_state *s = node->state;
    off_t data, hole;

    (void)err;
    bs->flags = VIMG_BS_OFFSET_VALID | VIMG_BS_ALLOCATED | VIMG_BS_DATA;
    bs->offset = offset;
    bs->file = node;
    bs->bytes = bytes;
    if (!s->can_seek_data)
        return 0;
    errno = 0;
    data = glfs_lseek(s->fd, (off_t)offset, SEEK_DATA);
    if (data < 0 && errno == ENXIO) {
        bs->flags = (bs->flags & ~VIMG_BS_DATA) | VIMG_BS_ZERO;
        return 0;
    }
    if (data < 0 || data < (off_t)offset) {
        s->can_seek_data = false;
        return 0;
    }
    if (data > (off_t)offset) {
        bs->flags = (bs->flags & ~VIMG_BS_DATA) | VIMG_BS_ZERO;
        bs->bytes = (uint64_t)data - offset;
    } else {
        hole = glfs_lseek(s->fd, (off_t)offset, SEEK_HOLE);
        if (hole < (off_t)offset) {
            s->can_seek_data = false;
            return 0;
        }
        if (hole > (off_t)offset)
            bs->bytes = (uint64_t)hole - offset;
    }
    if (bs->bytes > bytes)
        bs->bytes = bytes;
    return 0;
}

/* Sets the file's size, allocating [old end, size) as prealloc asks. */
static int
gluster_resize(glfs_fd_t *fd, uint64_t old_size, uint64_t size, int prealloc,
               struct vimg_error *err)
{
    errno = 0;
    switch (prealloc) {
    case VIMG_PREALLOC_OFF:
        if (glfs_ftruncate(fd, (off_t)size, NULL, NULL) < 0)
            return gluster_errno(err, "Could not resize file");
        return 0;
    case VIMG_PREALLOC_FALLOC:
        if (size > old_size &&
            glfs_fallocate(fd, 0, (off_t)old_size, (size_t)(size - old_size)) < 0)
            return gluster_errno(err, "Could not preallocate data for the new file");
        return 0;
    case VIMG_PREALLOC_FULL:
        if (glfs_ftruncate(fd, (off_t)size, NULL, NULL) < 0)
            return gluster_errno(err, "Could not resize file");
        if (size > old_size &&
            glfs_zerofill(fd, (off_t)old_size, (off_t)(size - old_size)) < 0)
            return gluster_errno(err, "Could not zerofill the new area");
        return 0;
    default:
        return vimg_error_set(err, ENOTSUP, "Unsupported preallocation mode: %s",
                              vimg_prealloc_name(prealloc));
    }
}

static int
gluster_truncate(struct vimg_node *node, uint64_t size, bool is_exact, int prealloc,
                 struct vimg_error *err)
{
    struct gluster_state *s = node->state;
    int64_t cur = gluster_length(node, err);

    (void)is_exact;
    if (cur < 0)
        return (int)cur;
    return gluster_resize(s->fd, (uint64_t)cur, size, prealloc, err);
}

/* In the order qemu-img lists them. */
static const struct vimg_opt_desc gluster_create_opts[] = {
    { "size", VIMG_OPT_SIZE, "Virtual disk size", NULL },
    { "preallocation", VIMG_OPT_STRING,
      "Preallocation mode (allowed values: off, falloc, full)", NULL },
    { "debug", VIMG_OPT_NUMBER, "Gluster log level, valid range is 0-9", NULL },
    { "logfile", VIMG_OPT_STRING, "Logfile path of libgfapi", NULL },
    { NULL, 0, NULL, NULL },
};

static int
gluster_create(const char *filename, struct vimg_opts *opts, struct vimg_error *err)
{
    struct gluster_conf c = { 0 };
    const char *mode = vimg_opts_get(opts, "preallocation");
    glfs_t *fs = NULL;
    glfs_fd_t *fd;
    uint64_t size;
    int prealloc = VIMG_PREALLOC_OFF, ret;

    if ((ret = vimg_opts_get_size(opts, "size", 0, &size, err)) < 0 ||
        (mode && (ret = vimg_prealloc_parse(mode, &prealloc, err)) < 0))
        return ret;
    if (prealloc == VIMG_PREALLOC_METADATA)
        return vimg_error_set(err, EINVAL, "Invalid parameter 'metadata'");
    if ((ret = gluster_parse_logging(opts, &c, err)) < 0 ||
        (ret = gluster_parse_uri(filename, &c, err)) < 0 ||
        (ret = gluster_conn_get(&fs, &c, err)) < 0)
        goto out;
    errno = 0;
    fd = glfs_creat(fs, c.path, O_WRONLY | O_CREAT | O_TRUNC, S_IRUSR | S_IWUSR);
    if (!fd) {
        ret = vimg_error_set_errno(err, errno ? errno : EIO, "Could not create '%s'",
                                   filename);
        goto out;
    }
    ret = gluster_resize(fd, 0, size, prealloc, err);
    if (glfs_close(fd) < 0 && ret == 0)
        ret = gluster_errno(err, "Could not close the new file");
out:
    if (fs)
        gluster_conn_put(fs);
    gluster_conf_free(&c);
    return ret;
}

const struct vimg_driver vimg_gluster_driver = {
    .name = "gluster",
    .kind = VIMG_DRIVER_PROTOCOL,
    .state_size = sizeof(struct gluster_state),
    .protocols = gluster_protocols,
    .has_zero_init = true,
    .lacks_get_info = true,
    .open = gluster_open,
    .close = gluster_close,
    .create_opts = gluster_create_opts,
    .create = gluster_create,
    .preadv = gluster_preadv,
    .pwritev = gluster_pwritev,
    .pwrite_zeroes = gluster_pwrite_zeroes,
    .discard = gluster_discard,
    .flush = gluster_flush,
    .block_status = gluster_block_status,
    .length = gluster_length,
    .allocated_size = gluster_allocated_size,
    .truncate = gluster_truncate,
};
