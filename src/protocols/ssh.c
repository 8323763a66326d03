/*
 * The ssh protocol: images on a remote host, read and written over SFTP
 * through libssh. Filenames and messages follow qemu-img's ssh driver
 * (block-drivers-manual.texi, "Secure Shell (ssh) disk images"):
 *   ssh://[USER@]HOST[:PORT]/PATH[?host_key_check=CHECK]
 * and the --image-opts keys user, path, server.host, server.port,
 * host-key-check.mode|type|hash, or the older host, port, host_key_check.
 * CHECK is yes (known_hosts), no, or md5:HEX, sha1:HEX, sha256:HEX (colons
 * in HEX are ignored). Authentication is by public key: the identities held
 * by ssh-agent (SSH_AUTH_SOCK), as qemu-img does it.
 *
 * A libssh session serves one caller at a time, so parallel callers take a
 * connection each from a small pool (each its own SSH session, SFTP session
 * and file handle), opened on demand up to SSH_MAX_CONNS. Within one read,
 * SSH_READ_DEPTH SFTP reads are in flight at once.
 *
 * A connection outlives the node that used it: closing parks its SSH and
 * SFTP sessions (its file handle closed), and the next open or create of
 * this process with the same user, host, port and host key check takes
 * them over instead of connecting, checking the host key and logging in
 * again. qemu-img create and convert open a target several times (create,
 * format create, convert), and each SSH login costs the server a process
 * and a key exchange. A connection that saw an I/O error is never parked;
 * a parked one that fails to open a file is dropped for a new connection,
 * which then gives the error a fresh connection would.
 *
 * Growing is lazy: truncate only records the new size, which length then
 * reports; reads past the end of the remote file within it read zeros, and
 * writes there extend the remote file as they land. The remote file is
 * grown to the recorded size (its last byte written) at flush and close, so
 * a format growing its file cluster run by cluster run (qcow2) costs no
 * round trip per run.
 *
 * Leaves out: password and keyboard-interactive authentication (as qemu-img),
 * shrinking (qemu-img refuses it too), preallocation.
 */
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <libssh/libssh.h>
#include <libssh/sftp.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "core/driver.h"

#define SSH_DEFAULT_PORT  "22"
#define SSH_MAX_CONNS     4
#define SSH_CHUNK         (64u << 10)   /* bytes per SFTP read request */
#define SSH_WRITE_CHUNK   (128u << 10)  /* bytes per SFTP write request */
#define SSH_WRITE_CHUNK_MAX (240u << 10) /* ... when the server's limits allow this many */
#define SSH_WRITE_DEPTH   8             /* SFTP writes in flight within one request */
#define SSH_READ_DEPTH    16            /* SFTP reads in flight within one request */
#define SSH_GROW_WAIT_MS  20            /* a caller waits this long before adding a connection */
#define SSH_MAX_PARKED    SSH_MAX_CONNS /* idle connections kept for the next open */

enum ssh_check_mode { SSH_CHECK_NONE, SSH_CHECK_HASH, SSH_CHECK_KNOWN_HOSTS };

struct ssh_conf {
    char *user;
    char *host;
    char *port;
    char *path;
    char *legacy_check;         /* host_key_check as given, shown in the filename */
    enum ssh_check_mode mode;
    enum ssh_publickey_hash_type hash_type;
    char *hash;                 /* as given, colons and all */
};

struct ssh_conn {
    ssh_session session;
    sftp_session sftp;
    sftp_file file;
    bool is_broken;             /* an I/O error: requests may be left unanswered */
    uint32_t write_chunk;       /* bytes per SFTP write request (ssh_query_write_chunk) */
};

/* Idle connections of this process, each logged in as key says (ssh_park_key). */
struct ssh_parked {
    char *key;
    pid_t pid;                  /* the process that parked it: a forked child must not share it */
    ssh_session session;
    sftp_session sftp;
    uint32_t write_chunk;
};

static pthread_mutex_t ssh_park_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_once_t ssh_park_once = PTHREAD_ONCE_INIT;
static void ssh_park_init(void);
static struct ssh_parked ssh_parked[SSH_MAX_PARKED];
static unsigned ssh_n_parked;

struct ssh_state {
    struct ssh_conf conf;
    int open_flags;             /* O_RDONLY or O_RDWR */
    bool can_fsync;
    bool has_warned_fsync;
    bool has_write_failed;      /* close leaves the size alone after a failed write */
    pthread_mutex_t lock;       /* protects conns, is_busy, n_conns, size, remote_size,
                                   has_warned_fsync, has_write_failed */
    pthread_mutex_t grow_lock;  /* held by writes that extend the file (ssh_pwritev) */
    pthread_rwlock_t write_lock; /* shared by writes, exclusive to ssh_materialize */
    pthread_cond_t cond;        /* a connection became free */
    struct ssh_conn conns[SSH_MAX_CONNS];
    bool is_busy[SSH_MAX_CONNS];
    unsigned n_conns;
    uint64_t size;              /* the file's size as our writes and truncates left it */
    uint64_t remote_size;       /* at most the remote file's size: what fstat said at
                                   open, grown by our writes as they complete */
};

static const char *const ssh_protocols[] = { "ssh", NULL };

static void
ssh_conf_free(struct ssh_conf *c)
{
    free(c->user);
    free(c->host);
    free(c->port);
    free(c->path);
    free(c->legacy_check);
    free(c->hash);
    memset(c, 0, sizeof(*c));
}

static int
ssh_oom(struct vimg_error *err)
{
    return vimg_error_set(err, ENOMEM, "Out of memory");
}

/* Parses "yes", "no" or "TYPE:HEX" into c; QEMU's words when it is none of them. */
static int
ssh_parse_legacy_check(const char *v, struct ssh_conf *c, struct vimg_error *err)
{
    static const struct {
        const char *prefix;
        enum ssh_publickey_hash_type type;
    } hashes[] = {
        { "md5:", SSH_PUBLICKEY_HASH_MD5 },
        { "sha1:", SSH_PUBLICKEY_HASH_SHA1 },
        { "sha256:", SSH_PUBLICKEY_HASH_SHA256 },
    };

    if (!(c->legacy_check = strdup(v)))
        return ssh_oom(err);
    if (strcmp(v, "no") == 0) {
        c->mode = SSH_CHECK_NONE;
        return 0;
    }
    if (strcmp(v, "yes") == 0) {
        c->mode = SSH_CHECK_KNOWN_HOSTS;
        return 0;
    }
    for (size_t i = 0; i < sizeof(hashes) / sizeof(hashes[0]); i++) {
        size_t n = strlen(hashes[i].prefix);
        if (strncmp(v, hashes[i].prefix, n) == 0) {
            c->mode = SSH_CHECK_HASH;
            c->hash_type = hashes[i].type;
            return (c->hash = strdup(v + n)) ? 0 : ssh_oom(err);
        }
    }
    return vimg_error_set(err, EINVAL, "unknown host_key_check setting (%s)", v);
}

/* [user@]host[:port] of the URI authority; IPv6 hosts in brackets. */
static int
ssh_parse_authority(const char *auth, size_t len, struct ssh_conf *c)
{
    const char *at = memchr(auth, '@', len), *host, *end = auth + len, *port;
    size_t host_len;

    if (at) {
        c->user = vimg_uri_decode(auth, (size_t)(at - auth));
        if (!c->user)
            return -1;
        auth = at + 1;
    }
    if (vimg_uri_split_host(auth, (size_t)(end - auth), &host, &host_len, &port) < 0)
        return -1;
    c->host = strndup(host, host_len);
    if (port && port < end) {
        for (const char *p = port; p < end; p++)
            if (*p < '0' || *p > '9')
                return -1;
        c->port = strndup(port, (size_t)(end - port));
    }
    return c->host ? 0 : -1;
}

/* Only host_key_check means anything in the query; qemu-img ignores the rest. */
static int
ssh_parse_query(const char *q, struct ssh_conf *c, struct vimg_error *err)
{
    while (q && *q) {
        size_t len = strcspn(q, "&");
        if (len > 15 && strncmp(q, "host_key_check=", 15) == 0) {
            char *v = vimg_uri_decode(q + 15, len - 15);
            int ret;
            if (!v)
                return ssh_oom(err);
            free(c->legacy_check);
            free(c->hash);
            c->legacy_check = c->hash = NULL;
            ret = ssh_parse_legacy_check(v, c, err);
            free(v);
            if (ret < 0)
                return ret;
        }
        q += len + (q[len] == '&');
    }
    return 0;
}

static int
ssh_parse_uri(const char *uri, struct ssh_conf *c, struct vimg_error *err)
{
    const char *auth = uri + strlen("ssh://"), *path, *query;
    size_t auth_len;

    if (strncmp(uri, "ssh://", 6) != 0)
        return vimg_error_set(err, EINVAL, "URI scheme must be 'ssh'");
    auth_len = strcspn(auth, "/?#");
    path = auth + auth_len;
    query = strchr(path, '?');
    if (ssh_parse_authority(auth, auth_len, c) < 0)
        return vimg_error_set(err, EINVAL, "Invalid URI");
    if (!c->host[0])
        return vimg_error_set(err, EINVAL, "missing hostname in URI");
    if (*path != '/' || path[1] == '?' || path[1] == '\0' || path[1] == '#')
        return vimg_error_set(err, EINVAL, "missing remote path in URI");
    c->path = vimg_uri_decode(path, query ? (size_t)(query - path) : strcspn(path, "#"));
    if (!c->path)
        return ssh_oom(err);
    c->mode = SSH_CHECK_KNOWN_HOSTS;
    return query ? ssh_parse_query(query + 1, c, err) : 0;
}

static int
ssh_dup_opt(struct vimg_opts *opts, const char *key, char **out, struct vimg_error *err)
{
    const char *v = vimg_opts_get(opts, key);

    if (!v)
        return vimg_error_set(err, EINVAL, "Parameter '%s' is missing", key);
    return (*out = strdup(v)) ? 0 : ssh_oom(err);
}

/* host-key-check.{mode,type,hash}: the QAPI form of host_key_check. */
static int
ssh_parse_check_dict(struct vimg_opts *opts, struct ssh_conf *c, struct vimg_error *err)
{
    static const char *const modes[] = { "none", "hash", "known_hosts", NULL };
    static const char *const types[] = { "md5", "sha1", "sha256", NULL };
    static const enum ssh_publickey_hash_type type_ids[] = {
        SSH_PUBLICKEY_HASH_MD5, SSH_PUBLICKEY_HASH_SHA1, SSH_PUBLICKEY_HASH_SHA256,
    };
    int mode, type, ret;

    vimg_opts_get_dict(opts, "host-key-check");
    if (!vimg_opts_has(opts, "host-key-check.mode"))
        return vimg_error_set(err, EINVAL, "Parameter 'host-key-check.mode' is missing");
    if (vimg_opts_get_enum(opts, "host-key-check.mode", modes, 0, &mode, err) < 0)
        return vimg_error_set(err, EINVAL, "Parameter 'mode' does not accept value '%s'",
                              vimg_opts_peek(opts, "host-key-check.mode"));
    c->mode = (enum ssh_check_mode)mode;
    if (c->mode != SSH_CHECK_HASH)
        return 0;
    if (!vimg_opts_has(opts, "host-key-check.type"))
        return vimg_error_set(err, EINVAL, "Parameter 'host-key-check.type' is missing");
    if (vimg_opts_get_enum(opts, "host-key-check.type", types, 0, &type, err) < 0)
        return vimg_error_set(err, EINVAL, "Parameter 'type' does not accept value '%s'",
                              vimg_opts_peek(opts, "host-key-check.type"));
    c->hash_type = type_ids[type];
    if ((ret = ssh_dup_opt(opts, "host-key-check.hash", &c->hash, err)) < 0)
        return ret;
    return 0;
}

static int
ssh_parse_server_opts(struct vimg_opts *opts, struct ssh_conf *c, struct vimg_error *err)
{
    int ret;

    if (vimg_opts_has(opts, "host")) {
        if ((ret = ssh_dup_opt(opts, "host", &c->host, err)) < 0)
            return ret;
        if (vimg_opts_has(opts, "port"))
            return ssh_dup_opt(opts, "port", &c->port, err);
        return 0;
    }
    if (!vimg_opts_get_dict(opts, "server"))
        return vimg_error_set(err, EINVAL, "Parameter 'server' is missing");
    if ((ret = ssh_dup_opt(opts, "server.host", &c->host, err)) < 0 ||
        (ret = ssh_dup_opt(opts, "server.port", &c->port, err)) < 0)
        return ret;
    return 0;
}

static int
ssh_read_opts(struct vimg_opts *opts, struct ssh_conf *c, struct vimg_error *err)
{
    const char *filename = vimg_opts_get(opts, "filename");
    const char *legacy = vimg_opts_get(opts, "host_key_check");
    const char *user = vimg_opts_get(opts, "user");
    int ret;

    if (filename && strcmp(filename, "ssh") != 0) {
        if ((ret = ssh_parse_uri(filename, c, err)) < 0)
            return ret;
    } else {
        if ((ret = ssh_parse_server_opts(opts, c, err)) < 0 ||
            (ret = ssh_dup_opt(opts, "path", &c->path, err)) < 0)
            return ret;
        c->mode = SSH_CHECK_KNOWN_HOSTS;
    }
    if (user) {
        free(c->user);
        if (!(c->user = strdup(user)))
            return ssh_oom(err);
    }
    if (legacy) {
        free(c->legacy_check);
        free(c->hash);
        c->legacy_check = c->hash = NULL;
        if ((ret = ssh_parse_legacy_check(legacy, c, err)) < 0)
            return ret;
    } else if (vimg_opts_has(opts, "host-key-check")) {
        if ((ret = ssh_parse_check_dict(opts, c, err)) < 0)
            return ret;
    }
    return 0;
}

/* Fills in what the filename may leave out: the local user and port 22. */
static int
ssh_conf_defaults(struct ssh_conf *c, struct vimg_error *err)
{
    if (!c->port && !(c->port = strdup(SSH_DEFAULT_PORT)))
        return ssh_oom(err);
    if (!c->user) {
        struct passwd *pw = getpwuid(geteuid());
        if (!pw)
            return vimg_error_set(err, ENOENT, "failed to get current user name");
        if (!(c->user = strdup(pw->pw_name)))
            return ssh_oom(err);
    }
    return 0;
}

static int
ssh_connect_fd(const struct ssh_conf *c, struct vimg_error *err)
{
    int fd = vimg_tcp_connect(c->host, c->port, err), one = 1;

    /* Each SFTP request waits for its reply: Nagle would hold back its tail. */
    if (fd >= 0)
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    return fd;
}

/* Equal when want, read without its colons, spells the same hex digits as got. */
static bool
ssh_hash_matches(const char *got, const char *want)
{
    for (; *want; want++) {
        if (*want == ':')
            continue;
        if (!*got || tolower((unsigned char)*want) != *got)
            return false;
        got++;
    }
    return *got == '\0';
}

static const char *
ssh_hash_name(enum ssh_publickey_hash_type type)
{
    return type == SSH_PUBLICKEY_HASH_MD5 ? "md5" : type == SSH_PUBLICKEY_HASH_SHA1 ? "sha1"
                                                                                    : "sha256";
}

static int
ssh_check_hash(ssh_session session, const struct ssh_conf *c, struct vimg_error *err)
{
    ssh_key key = NULL;
    unsigned char *digest = NULL;
    size_t len = 0;
    char hex[2 * 64 + 1];
    int ret = 0;

    if (ssh_get_server_publickey(session, &key) != SSH_OK)
        return vimg_error_set(err, EINVAL, "failed to read remote host key");
    if (ssh_get_publickey_hash(key, c->hash_type, &digest, &len) != 0 || len > 64) {
        ret = vimg_error_set(err, EINVAL, "failed reading the hash of the remote host key");
        goto out;
    }
    for (size_t i = 0; i < len; i++)
        snprintf(hex + 2 * i, 3, "%02x", digest[i]);
    hex[2 * len] = '\0';
    if (!ssh_hash_matches(hex, c->hash))
        ret = vimg_error_set(err, EPERM, "remote host %s key fingerprint '%s:%s' does not "
                             "match host_key_check '%s:%s'",
                             ssh_key_type_to_char(ssh_key_type(key)), ssh_hash_name(c->hash_type),
                             hex, ssh_hash_name(c->hash_type), c->hash);
out:
    ssh_clean_pubkey_hash(&digest);
    ssh_key_free(key);
    return ret;
}

/* The key known_hosts disagrees with, named by type and SHA256 fingerprint as ssh does. */
static int
ssh_key_changed(ssh_session session, struct vimg_error *err)
{
    ssh_key key = NULL;
    unsigned char *digest = NULL;
    char *fingerprint = NULL;
    size_t len = 0;
    int ret;

    if (ssh_get_server_publickey(session, &key) != SSH_OK ||
        ssh_get_publickey_hash(key, SSH_PUBLICKEY_HASH_SHA256, &digest, &len) != 0 ||
        !(fingerprint = ssh_get_fingerprint_hash(SSH_PUBLICKEY_HASH_SHA256, digest, len)))
        ret = vimg_error_set(err, EINVAL, "host key does not match the one in known_hosts; "
                             "this may be a possible attack");
    else
        ret = vimg_error_set(err, EINVAL, "host key (%s key with fingerprint %s) does not "
                             "match the one in known_hosts; this may be a possible attack",
                             ssh_key_type_to_char(ssh_key_type(key)), fingerprint);
    ssh_string_free_char(fingerprint);
    ssh_clean_pubkey_hash(&digest);
    ssh_key_free(key);
    return ret;
}

static int
ssh_check_known_hosts(ssh_session session, struct vimg_error *err)
{
    switch (ssh_session_is_known_server(session)) {
    case SSH_KNOWN_HOSTS_OK:
        return 0;
    case SSH_KNOWN_HOSTS_CHANGED:
        return ssh_key_changed(session, err);
    case SSH_KNOWN_HOSTS_OTHER:
        return vimg_error_set(err, EINVAL, "host key for this server not found, another type "
                              "exists");
    case SSH_KNOWN_HOSTS_UNKNOWN:
    case SSH_KNOWN_HOSTS_NOT_FOUND:
        return vimg_error_set(err, EINVAL, "no host key was found in known_hosts");
    default:
        return vimg_error_set(err, EINVAL, "server error: %s", ssh_get_error(session));
    }
}

static int
ssh_authenticate(ssh_session session, struct vimg_error *err)
{
    int r = ssh_userauth_none(session, NULL);

    if (r == SSH_AUTH_SUCCESS)
        return 0;
    if (r == SSH_AUTH_ERROR)
        return vimg_error_set(err, EPERM, "failed to authenticate using none authentication: %s",
                              ssh_get_error(session));
    if ((ssh_userauth_list(session, NULL) & SSH_AUTH_METHOD_PUBLICKEY) &&
        ssh_userauth_publickey_auto(session, NULL, NULL) == SSH_AUTH_SUCCESS)
        return 0;
    return vimg_error_set(err, EPERM, "failed to authenticate using publickey authentication "
                          "and the identities held by your ssh-agent");
}

static void
ssh_conn_close(struct ssh_conn *cn)
{
    if (cn->file)
        sftp_close(cn->file);
    if (cn->sftp)
        sftp_free(cn->sftp);
    if (cn->session) {
        ssh_disconnect(cn->session);
        ssh_free(cn->session);
    }
    memset(cn, 0, sizeof(*cn));
}

/* What a parked connection must match to serve c: who logged in where, how the host was checked. */
static char *
ssh_park_key(const struct ssh_conf *c)
{
    char *key;

    if (asprintf(&key, "%s@%s:%s\n%d:%d:%s", c->user, c->host, c->port, (int)c->mode,
                 (int)c->hash_type, c->mode == SSH_CHECK_HASH ? c->hash : "") < 0)
        return NULL;
    return key;
}

static void
ssh_session_free(ssh_session session, sftp_session sftp)
{
    if (sftp)
        sftp_free(sftp);
    if (session) {
        ssh_disconnect(session);
        ssh_free(session);
    }
}

/* Closes cn's file and keeps its sessions for the next open with conf c, else closes them. */
static void
ssh_conn_park(struct ssh_conn *cn, const struct ssh_conf *c)
{
    char *key = NULL;
    bool is_closed;

    if (cn->is_broken || !cn->file) {
        ssh_conn_close(cn);
        return;
    }
    is_closed = sftp_close(cn->file) == SSH_NO_ERROR;
    cn->file = NULL;            /* freed, whether the server closed it or not */
    if (!is_closed || !ssh_is_connected(cn->session) || !(key = ssh_park_key(c))) {
        ssh_conn_close(cn);
        return;
    }
    pthread_once(&ssh_park_once, ssh_park_init);
    pthread_mutex_lock(&ssh_park_lock);
    if (ssh_n_parked < SSH_MAX_PARKED) {
        ssh_parked[ssh_n_parked++] = (struct ssh_parked){ key, getpid(), cn->session, cn->sftp,
                                                          cn->write_chunk };
        memset(cn, 0, sizeof(*cn));
        key = NULL;
    }
    pthread_mutex_unlock(&ssh_park_lock);
    free(key);
    ssh_conn_close(cn);
}

/* Takes a parked connection for conf c into cn; false if there is none. */
static bool
ssh_conn_unpark(struct ssh_conn *cn, const struct ssh_conf *c)
{
    char *key = ssh_park_key(c);
    bool found = false;

    if (!key)
        return false;
    pthread_mutex_lock(&ssh_park_lock);
    for (unsigned i = ssh_n_parked; i-- > 0;) {
        if (ssh_parked[i].pid == getpid() && strcmp(ssh_parked[i].key, key) == 0) {
            cn->session = ssh_parked[i].session;
            cn->sftp = ssh_parked[i].sftp;
            cn->write_chunk = ssh_parked[i].write_chunk;
            free(ssh_parked[i].key);
            ssh_parked[i] = ssh_parked[--ssh_n_parked];
            found = true;
            break;
        }
    }
    pthread_mutex_unlock(&ssh_park_lock);
    free(key);
    return found;
}

/*
 * At exit, parked connections say goodbye to their servers. An atexit
 * handler, registered at the first park, so that it runs before OpenSSL's
 * own (registered when the first connection set up its crypto).
 */
static void
ssh_park_drain(void)
{
    pthread_mutex_lock(&ssh_park_lock);
    for (unsigned i = 0; i < ssh_n_parked; i++) {
        if (ssh_parked[i].pid == getpid())
            ssh_session_free(ssh_parked[i].session, ssh_parked[i].sftp);
        free(ssh_parked[i].key);
    }
    ssh_n_parked = 0;
    pthread_mutex_unlock(&ssh_park_lock);
}

static void
ssh_park_init(void)
{
    atexit(ssh_park_drain);
}

static int
ssh_conn_session(struct ssh_conn *cn, const struct ssh_conf *c, struct vimg_error *err)
{
    int fd = ssh_connect_fd(c, err);
    long timeout = 60;

    if (fd < 0)
        return fd;
    if (!(cn->session = ssh_new())) {
        close(fd);
        return ssh_oom(err);
    }
    if (ssh_options_set(cn->session, SSH_OPTIONS_HOST, c->host) < 0 ||
        ssh_options_set(cn->session, SSH_OPTIONS_PORT_STR, c->port) < 0 ||
        ssh_options_set(cn->session, SSH_OPTIONS_USER, c->user) < 0 ||
        ssh_options_set(cn->session, SSH_OPTIONS_TIMEOUT, &timeout) < 0 ||
        ssh_options_set(cn->session, SSH_OPTIONS_FD, &fd) < 0) {
        close(fd);
        return vimg_error_set(err, EINVAL, "%s", ssh_get_error(cn->session));
    }
    if (ssh_connect(cn->session) != SSH_OK)
        return vimg_error_set(err, EINVAL, "failed to establish SSH session: %s",
                              ssh_get_error(cn->session));
    return 0;
}

static int
ssh_sftp_error(struct ssh_conn *cn, int errnum, const char *what, const char *path,
               struct vimg_error *err)
{
    return vimg_error_set(err, errnum, "%s '%s': %s (libssh error code: %d, sftp error "
                          "code: %d)", what, path, ssh_get_error(cn->session),
                          ssh_get_error_code(cn->session), sftp_get_error(cn->sftp));
}

static uint32_t ssh_query_write_chunk(struct ssh_conn *cn);

/* Connects, checks the host, logs in and opens path with flags (O_*). */
static int
ssh_conn_open(struct ssh_conn *cn, const struct ssh_conf *c, int flags, mode_t mode,
              struct vimg_error *err)
{
    int ret;

    if (ssh_conn_unpark(cn, c)) {
        if ((cn->file = sftp_open(cn->sftp, c->path, flags, mode)))
            return 0;
        ssh_conn_close(cn);     /* errors come from a new connection, as without parking */
    }
    if ((ret = ssh_conn_session(cn, c, err)) < 0)
        goto fail;
    if (c->mode == SSH_CHECK_HASH)
        ret = ssh_check_hash(cn->session, c, err);
    else if (c->mode == SSH_CHECK_KNOWN_HOSTS)
        ret = ssh_check_known_hosts(cn->session, err);
    if (ret < 0 || (ret = ssh_authenticate(cn->session, err)) < 0)
        goto fail;
    if (!(cn->sftp = sftp_new(cn->session)) || sftp_init(cn->sftp) < 0) {
        ret = vimg_error_set(err, EIO, "failed to initialize sftp handle: %s",
                             ssh_get_error(cn->session));
        goto fail;
    }
    if ((cn->write_chunk = ssh_query_write_chunk(cn)) == 0) {
        ret = vimg_error_set(err, EIO, "failed to initialize sftp handle: %s",
                             ssh_get_error(cn->session));
        goto fail;
    }
    cn->file = sftp_open(cn->sftp, c->path, flags, mode);
    if (!cn->file) {
        ret = ssh_sftp_error(cn, EIO, "failed to open remote file", c->path, err);
        goto fail;
    }
    return 0;
fail:
    ssh_conn_close(cn);
    return ret;
}

static int
ssh_set_filename(struct vimg_node *node, const struct ssh_conf *c, struct vimg_error *err)
{
    char *name;
    int r;

    if (c->legacy_check)
        r = asprintf(&name, "ssh://%s@%s:%s%s?host_key_check=%s", c->user, c->host, c->port,
                     c->path, c->legacy_check);
    else
        r = asprintf(&name, "ssh://%s@%s:%s%s", c->user, c->host, c->port, c->path);
    if (r < 0)
        return ssh_oom(err);
    free(node->filename);
    node->filename = name;
    return 0;
}

/* qemu-img checks these options against a schema, so a stray key gets QAPI's words. */
static int
ssh_reject_unknown(struct vimg_opts *opts, struct vimg_error *err)
{
    char key[256];

    if (vimg_opts_find_unused(opts, key, sizeof(key)))
        return vimg_error_set(err, EINVAL, "Parameter '%s' is unexpected", key);
    return 0;
}

static int
ssh_open(struct vimg_node *node, struct vimg_opts *opts, unsigned flags, struct vimg_error *err)
{
    struct ssh_state *s = node->state;
    sftp_attributes attrs;
    int ret;

    pthread_mutex_init(&s->lock, NULL);
    pthread_mutex_init(&s->grow_lock, NULL);
    pthread_rwlock_init(&s->write_lock, NULL);
    pthread_cond_init(&s->cond, NULL);
    s->open_flags = (flags & VIMG_OPEN_RDWR) ? O_RDWR : O_RDONLY;
    if ((ret = ssh_read_opts(opts, &s->conf, err)) < 0 ||
        (ret = ssh_reject_unknown(opts, err)) < 0 ||
        (ret = ssh_conf_defaults(&s->conf, err)) < 0 ||
        (ret = ssh_set_filename(node, &s->conf, err)) < 0 ||
        (ret = ssh_conn_open(&s->conns[0], &s->conf, s->open_flags, 0, err)) < 0)
        goto fail;
    s->n_conns = 1;
    attrs = sftp_fstat(s->conns[0].file);
    if (!attrs) {
        ret = ssh_sftp_error(&s->conns[0], EIO, "failed to read file attributes of",
                             s->conf.path, err);
        goto fail;
    }
    s->size = s->remote_size = attrs->size;
    sftp_attributes_free(attrs);
    s->can_fsync = sftp_extension_supported(s->conns[0].sftp, "fsync@openssh.com", "1") == 1;
    return 0;
fail:
    ssh_conn_close(&s->conns[0]);
    ssh_conf_free(&s->conf);
    pthread_cond_destroy(&s->cond);
    pthread_rwlock_destroy(&s->write_lock);
    pthread_mutex_destroy(&s->grow_lock);
    pthread_mutex_destroy(&s->lock);
    return ret;
}

static int ssh_materialize(struct ssh_state *s, struct vimg_error *err);

static void
ssh_close(struct vimg_node *node)
{
    struct ssh_state *s = node->state;
    struct vimg_error err = { 0 };
    bool has_failed = s->has_write_failed;

    for (unsigned i = 0; i < s->n_conns; i++)
        has_failed |= s->conns[i].is_broken;
    /* Callers opened with cache.no-flush never flush: the file gets its size here,
     * unless a request failed (the caller has reported that; the image is suspect). */
    if (s->open_flags != O_RDONLY && !has_failed && ssh_materialize(s, &err) < 0)
        vimg_warn("%s: %s", s->conf.path, err.msg);
    for (unsigned i = 0; i < s->n_conns; i++)
        ssh_conn_park(&s->conns[i], &s->conf);
    ssh_conf_free(&s->conf);
    pthread_cond_destroy(&s->cond);
    pthread_rwlock_destroy(&s->write_lock);
    pthread_mutex_destroy(&s->grow_lock);
    pthread_mutex_destroy(&s->lock);
}

/* Waits on s->cond for at most SSH_GROW_WAIT_MS; s->lock is held. */
static int
ssh_wait_briefly(struct ssh_state *s)
{
    struct timespec ts;

    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_nsec += SSH_GROW_WAIT_MS * 1000000L;
    if (ts.tv_nsec >= 1000000000L) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000L;
    }
    return pthread_cond_timedwait(&s->cond, &s->lock, &ts);
}

/*
 * Takes a free connection, opening another one when all are busy and the pool
 * has room. A slot that fails to connect stays busy and is never handed out;
 * the caller then waits for the connections that work, if there are any.
 */
static int
ssh_acquire(struct ssh_state *s, struct vimg_error *err)
{
    struct ssh_conn cn = { 0 };
    bool has_waited = false;
    unsigned i;
    int ret;

    pthread_mutex_lock(&s->lock);
    for (;;) {
        for (i = 0; i < s->n_conns; i++) {
            if (!s->is_busy[i] && s->conns[i].file) {
                s->is_busy[i] = true;
                pthread_mutex_unlock(&s->lock);
                return (int)i;
            }
        }
        if (s->n_conns < SSH_MAX_CONNS && has_waited) {
            i = s->n_conns++;
            s->is_busy[i] = true;
            pthread_mutex_unlock(&s->lock);
            ret = ssh_conn_open(&cn, &s->conf, s->open_flags, 0, err);
            pthread_mutex_lock(&s->lock);
            s->conns[i] = cn;
            if (ret == 0) {
                pthread_mutex_unlock(&s->lock);
                return (int)i;
            }
            if (!s->conns[0].file) {
                pthread_mutex_unlock(&s->lock);
                return ret;
            }
            has_waited = false;
            continue;
        }
        if (s->n_conns >= SSH_MAX_CONNS) {
            pthread_cond_wait(&s->cond, &s->lock);
        } else if (ssh_wait_briefly(s) == ETIMEDOUT) {
            has_waited = true;
        }
    }
}

static void
ssh_release(struct ssh_state *s, int i)
{
    pthread_mutex_lock(&s->lock);
    s->is_busy[i] = false;
    pthread_cond_signal(&s->cond);
    pthread_mutex_unlock(&s->lock);
}

static int
ssh_io_error(struct ssh_conn *cn, const char *what, struct vimg_error *err)
{
    int e = EIO;

    cn->is_broken = true;
    return vimg_error_set(err, e, "%s failed: %s", what, ssh_get_error(cn->session));
}

static int64_t
ssh_length(struct vimg_node *node, struct vimg_error *err)
{
    struct ssh_state *s = node->state;
    int64_t size;

    (void)err;
    pthread_mutex_lock(&s->lock);
    size = (int64_t)s->size;
    pthread_mutex_unlock(&s->lock);
    return size;
}

/* Collects the n replies still in flight from ring slot head on, discarding their data. */
static int
ssh_read_drain(struct ssh_conn *cn, const int *ids, const uint32_t *lens, unsigned head,
               unsigned n)
{
    uint8_t *scratch = malloc(SSH_CHUNK);
    int ret = 0;

    if (!scratch)
        return -1;
    /* libssh answers 0 without waiting once it saw EOF: clear that, so that every
     * reply is taken off the channel before the next request on this connection. */
    for (; n; n--, head = (head + 1) % SSH_READ_DEPTH) {
        cn->file->eof = 0;
        if (sftp_async_read(cn->file, scratch, lens[head], (uint32_t)ids[head]) < 0)
            ret = -1;
    }
    free(scratch);
    return ret;
}

/*
 * Reads [offset, +bytes) into buf with up to SSH_READ_DEPTH requests in
 * flight; what lies past the end of the remote file reads as zeros.
 */
static int
ssh_read_buf(struct ssh_conn *cn, uint64_t offset, uint8_t *buf, uint64_t bytes,
             struct vimg_error *err)
{
    int ids[SSH_READ_DEPTH];
    uint32_t lens[SSH_READ_DEPTH];
    uint64_t sent = 0, done = 0;
    unsigned head = 0, n = 0;
    bool is_eof = false;

    if (sftp_seek64(cn->file, offset) < 0)
        return ssh_io_error(cn, "sftp seek", err);
    while (done < bytes) {
        while (!is_eof && n < SSH_READ_DEPTH && sent < bytes) {
            uint32_t len = bytes - sent < SSH_CHUNK ? (uint32_t)(bytes - sent) : SSH_CHUNK;
            int id = sftp_async_read_begin(cn->file, len);
            if (id < 0)
                return ssh_io_error(cn, "sftp read", err);
            ids[(head + n) % SSH_READ_DEPTH] = id;
            lens[(head + n) % SSH_READ_DEPTH] = len;
            n++;
            sent += len;
        }
        if (n == 0) {
            memset(buf + done, 0, bytes - done);
            break;
        }
        int r = sftp_async_read(cn->file, buf + done, lens[head], (uint32_t)ids[head]);
        if (r < 0)
            return ssh_io_error(cn, "sftp read", err);
        if (r == 0 || (uint32_t)r < lens[head]) {
            /* EOF or a short read: drain what is in flight, then read the rest again. */
            is_eof = r == 0;
            done += (uint64_t)r;
            head = (head + 1) % SSH_READ_DEPTH;
            n--;
            if (n && ssh_read_drain(cn, ids, lens, head, n) < 0)
                return ssh_io_error(cn, "sftp read", err);
            head = (head + n) % SSH_READ_DEPTH;
            n = 0;
            if (is_eof)
                continue;
            sent = done;
            if (sftp_seek64(cn->file, offset + done) < 0)
                return ssh_io_error(cn, "sftp seek", err);
            continue;
        }
        done += (uint64_t)r;
        head = (head + 1) % SSH_READ_DEPTH;
        n--;
    }
    return 0;
}

static int
ssh_pread(struct vimg_node *node, uint64_t offset, uint8_t *buf, uint64_t bytes,
          struct vimg_error *err)
{
    struct ssh_state *s = node->state;
    int i, ret;

    if ((i = ssh_acquire(s, err)) < 0)
        return i;
    ret = ssh_read_buf(&s->conns[i], offset, buf, bytes, err);
    ssh_release(s, i);
    return ret;
}

/*
 * SFTP writes with up to SSH_WRITE_DEPTH requests in flight. libssh 0.10 has
 * no asynchronous write, so the requests (SFTP v3 SSH_FXP_WRITE, draft-ietf-
 * secsh-filexfer-02 section 6.4) go straight onto the session's channel and
 * their SSH_FXP_STATUS replies are read back from it here. This is safe
 * because the caller holds the connection alone and libssh's own SFTP calls
 * read whole packets, leaving nothing buffered between calls.
 */
#define SFTP_FXP_WRITE   6
#define SFTP_FXP_STATUS  101
#define SFTP_FXP_EXTENDED       200
#define SFTP_FXP_EXTENDED_REPLY 201
#define SFTP_FX_OK       0

static void
ssh_put_be32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

static uint32_t
ssh_get_be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static int
ssh_channel_read_all(ssh_channel channel, void *buf, uint32_t len)
{
    uint8_t *p = buf;

    while (len) {
        int r = ssh_channel_read(channel, p, len, 0);
        if (r <= 0)
            return -1;
        p += r;
        len -= (uint32_t)r;
    }
    return 0;
}

static uint64_t
ssh_get_be64(const uint8_t *p)
{
    return (uint64_t)ssh_get_be32(p) << 32 | ssh_get_be32(p + 4);
}

/*
 * Bytes per SFTP write: SSH_WRITE_CHUNK, or up to SSH_WRITE_CHUNK_MAX when
 * the server states its limits (OpenSSH's limits@openssh.com extension,
 * PROTOCOL in openssh-portable: uint64 max-packet-length, max-read-length,
 * max-write-length, max-open-handles); fewer, larger requests cost both
 * ends less. 0 when the channel failed. Sent raw on the channel like the
 * writes: nothing else is in flight right after sftp_init.
 */
static uint32_t
ssh_query_write_chunk(struct ssh_conn *cn)
{
    static const char name[] = "limits@openssh.com";
    const uint32_t name_len = sizeof(name) - 1;
    uint8_t req[13 + sizeof(name) - 1], reply[256];
    uint32_t id, len;
    uint64_t limit;

    if (sftp_extension_supported(cn->sftp, name, "1") != 1)
        return SSH_WRITE_CHUNK;
    id = ++cn->sftp->id_counter;
    ssh_put_be32(req, 1 + 4 + 4 + name_len);
    req[4] = SFTP_FXP_EXTENDED;
    ssh_put_be32(req + 5, id);
    ssh_put_be32(req + 9, name_len);
    memcpy(req + 13, name, name_len);
    if (ssh_channel_write(cn->sftp->channel, req, sizeof(req)) != (int)sizeof(req) ||
        ssh_channel_read_all(cn->sftp->channel, reply, 4) < 0)
        return 0;
    len = ssh_get_be32(reply);
    if (len < 5 || len > sizeof(reply) || ssh_channel_read_all(cn->sftp->channel, reply, len) < 0)
        return 0;
    if (reply[0] != SFTP_FXP_EXTENDED_REPLY || ssh_get_be32(reply + 1) != id || len < 5 + 32)
        return SSH_WRITE_CHUNK;     /* a status: the server would not say */
    limit = ssh_get_be64(reply + 5 + 16);
    if (limit == 0)
        return SSH_WRITE_CHUNK;     /* no stated limit */
    if (limit < 512)
        limit = 512;
    return limit < SSH_WRITE_CHUNK_MAX ? (uint32_t)limit : SSH_WRITE_CHUNK_MAX;
}

static int
ssh_send_write(struct ssh_conn *cn, uint32_t id, uint64_t offset, const uint8_t *data,
               uint32_t len)
{
    ssh_string handle = cn->file->handle;
    uint32_t handle_len = (uint32_t)ssh_string_len(handle);
    uint8_t hdr[64 + 256];
    uint32_t n = 0;

    if (handle_len > 256)
        return -1;
    ssh_put_be32(hdr, 1 + 4 + 4 + handle_len + 8 + 4 + len);
    hdr[4] = SFTP_FXP_WRITE;
    ssh_put_be32(hdr + 5, id);
    ssh_put_be32(hdr + 9, handle_len);
    memcpy(hdr + 13, ssh_string_data(handle), handle_len);
    n = 13 + handle_len;
    ssh_put_be32(hdr + n, (uint32_t)(offset >> 32));
    ssh_put_be32(hdr + n + 4, (uint32_t)offset);
    ssh_put_be32(hdr + n + 8, len);
    n += 12;
    if (ssh_channel_write(cn->sftp->channel, hdr, n) != (int)n ||
        ssh_channel_write(cn->sftp->channel, data, len) != (int)len)
        return -1;
    return 0;
}

/* Reads one reply; *status is its SSH_FX_* code, *id its request id. */
static int
ssh_read_status(struct ssh_conn *cn, uint32_t *id, uint32_t *status)
{
    uint8_t hdr[13], skip[256];
    uint32_t len, left;

    if (ssh_channel_read_all(cn->sftp->channel, hdr, 4) < 0)
        return -1;
    len = ssh_get_be32(hdr);
    if (len < 9 || ssh_channel_read_all(cn->sftp->channel, hdr + 4, 9) < 0 ||
        hdr[4] != SFTP_FXP_STATUS)
        return -1;
    *id = ssh_get_be32(hdr + 5);
    *status = ssh_get_be32(hdr + 9);
    for (left = len - 9; left;) {
        uint32_t k = left < sizeof(skip) ? left : (uint32_t)sizeof(skip);
        if (ssh_channel_read_all(cn->sftp->channel, skip, k) < 0)
            return -1;
        left -= k;
    }
    return 0;
}

static int
ssh_status_errno(uint32_t status)
{
    switch (status) {
    case 3:     /* SSH_FX_PERMISSION_DENIED */
        return EACCES;
    case 8:     /* SSH_FX_OP_UNSUPPORTED */
        return ENOTSUP;
    default:
        return EIO;
    }
}

static int
ssh_write_buf(struct ssh_conn *cn, uint64_t offset, const uint8_t *buf, uint64_t bytes,
              struct vimg_error *err)
{
    uint32_t first_id = 0, n_sent = 0, n_inflight = 0, bad = SFTP_FX_OK;
    uint64_t sent = 0;

    while (sent < bytes || n_inflight) {
        uint32_t id, status;
        while (sent < bytes && n_inflight < SSH_WRITE_DEPTH && bad == SFTP_FX_OK) {
            uint32_t len = bytes - sent < cn->write_chunk ? (uint32_t)(bytes - sent)
                                                          : cn->write_chunk;
            id = ++cn->sftp->id_counter;
            if (n_sent++ == 0)
                first_id = id;
            if (ssh_send_write(cn, id, offset + sent, buf + sent, len) < 0)
                return ssh_io_error(cn, "sftp write", err);
            sent += len;
            n_inflight++;
        }
        if (!n_inflight)
            break;
        if (ssh_read_status(cn, &id, &status) < 0 || id - first_id >= n_sent)
            return ssh_io_error(cn, "sftp write", err);
        n_inflight--;
        if (status != SFTP_FX_OK && bad == SFTP_FX_OK)
            bad = status;
        if (bad != SFTP_FX_OK && sent < bytes)
            sent = bytes;   /* send no more; collect what is in flight */
    }
    if (bad != SFTP_FX_OK)
        return vimg_error_set(err, ssh_status_errno(bad), "sftp write failed: SFTP server "
                              "status %u", bad);
    return 0;
}

/* A write ending at end completed: both sizes are at least end now. */
static void
ssh_grow_size(struct ssh_state *s, uint64_t end)
{
    pthread_mutex_lock(&s->lock);
    if (end > s->size)
        s->size = end;
    if (end > s->remote_size)
        s->remote_size = end;
    pthread_mutex_unlock(&s->lock);
}

static uint64_t
ssh_get_size(struct ssh_state *s)
{
    uint64_t size;

    pthread_mutex_lock(&s->lock);
    size = s->size;
    pthread_mutex_unlock(&s->lock);
    return size;
}

static int
ssh_write_iov(struct ssh_conn *cn, uint64_t offset, uint64_t bytes, const struct iovec *iov,
              int n_iov, struct vimg_error *err)
{
    int ret = 0;

    for (int k = 0; k < n_iov && bytes && ret == 0; k++) {
        uint64_t len = iov[k].iov_len < bytes ? iov[k].iov_len : bytes;
        ret = ssh_write_buf(cn, offset, iov[k].iov_base, len, err);
        offset += len;
        bytes -= len;
    }
    return ret;
}

/*
 * A write that ends past the end of the file and inside a sector also fills
 * the rest of that sector with zeros: qemu-img's ssh node is sector granular,
 * so the file grows by whole sectors, and files made by both tools compare
 * equal. Such writes hold grow_lock, so that no other partial-sector write
 * lands in the padding meanwhile (a whole-sector write there would overlap
 * the same sector as the growing write, which callers do not do at once);
 * other writes need no lock and no read-modify-write round trip.
 */
static int
ssh_pwritev(struct vimg_node *node, uint64_t offset, uint64_t bytes, const struct iovec *iov,
            int n_iov, unsigned flags, struct vimg_error *err)
{
    static const uint8_t zeros[512];
    struct ssh_state *s = node->state;
    uint64_t end = offset + bytes, pad = 0;
    /* Whole-sector writes need no padding, so they never wait for one another. */
    bool is_growing = (offset % sizeof(zeros) || end % sizeof(zeros)) && end > ssh_get_size(s);
    int i, ret;

    if (is_growing) {
        pthread_mutex_lock(&s->grow_lock);
        if (end > ssh_get_size(s) && end % sizeof(zeros))
            pad = sizeof(zeros) - end % sizeof(zeros);
    }
    pthread_rwlock_rdlock(&s->write_lock);
    if ((i = ssh_acquire(s, err)) < 0) {
        pthread_rwlock_unlock(&s->write_lock);
        ret = i;
        goto out;
    }
    ret = ssh_write_iov(&s->conns[i], offset, bytes, iov, n_iov, err);
    if (ret == 0 && pad)
        ret = ssh_write_buf(&s->conns[i], end, zeros, pad, err);
    if (ret == 0 && (flags & VIMG_REQ_FUA) && s->can_fsync && sftp_fsync(s->conns[i].file) < 0)
        ret = ssh_io_error(&s->conns[i], "sftp fsync", err);
    ssh_release(s, i);
    if (ret == 0) {
        ssh_grow_size(s, end + pad);
    } else {
        pthread_mutex_lock(&s->lock);
        s->has_write_failed = true;
        pthread_mutex_unlock(&s->lock);
    }
    pthread_rwlock_unlock(&s->write_lock);
out:
    if (is_growing)
        pthread_mutex_unlock(&s->grow_lock);
    return ret;
}

/*
 * Grows the remote file to the size truncate recorded by writing its last
 * byte, as qemu-img's ssh driver grows files. No write is in flight meanwhile
 * (write_lock), so every byte past remote_size is one no write has put there.
 */
static int
ssh_materialize(struct ssh_state *s, struct vimg_error *err)
{
    static const uint8_t zero;
    uint64_t size;
    int i, ret = 0;

    pthread_rwlock_wrlock(&s->write_lock);
    pthread_mutex_lock(&s->lock);
    size = s->size > s->remote_size ? s->size : 0;
    pthread_mutex_unlock(&s->lock);
    if (size) {
        if ((i = ssh_acquire(s, err)) < 0) {
            ret = i;
        } else {
            ret = ssh_write_buf(&s->conns[i], size - 1, &zero, 1, err);
            ssh_release(s, i);
        }
        if (ret == 0)
            ssh_grow_size(s, size);
    }
    pthread_rwlock_unlock(&s->write_lock);
    return ret;
}

static int
ssh_flush(struct vimg_node *node, struct vimg_error *err)
{
    struct ssh_state *s = node->state;
    int i, ret;

    if ((ret = ssh_materialize(s, err)) < 0)
        return ret;
    if (!s->can_fsync) {
        pthread_mutex_lock(&s->lock);
        if (!s->has_warned_fsync)
            vimg_warn("ssh server %s:%s does not support fsync", s->conf.host, s->conf.port);
        s->has_warned_fsync = true;
        pthread_mutex_unlock(&s->lock);
        return 0;
    }
    /* One fsync covers the data every handle of this file wrote before it. */
    if ((i = ssh_acquire(s, err)) < 0)
        return i;
    if (sftp_fsync(s->conns[i].file) < 0)
        ret = ssh_io_error(&s->conns[i], "sftp fsync", err);
    ssh_release(s, i);
    return ret;
}

/* Grows the file to size: recorded now, written out by ssh_materialize. */
static int
ssh_truncate(struct vimg_node *node, uint64_t size, bool is_exact, int prealloc,
             struct vimg_error *err)
{
    struct ssh_state *s = node->state;
    uint64_t cur = (uint64_t)ssh_length(node, err);

    (void)is_exact;
    if (prealloc != VIMG_PREALLOC_OFF)
        return vimg_error_set(err, ENOTSUP, "Unsupported preallocation mode '%s'",
                              vimg_prealloc_name(prealloc));
    if (size < cur)
        return vimg_error_set(err, ENOTSUP, "ssh driver does not support shrinking files");
    /* Whole sectors, as from qemu-img's sector-granular node (see ssh_pwritev). */
    if (size % 512)
        size += 512 - size % 512;
    pthread_mutex_lock(&s->lock);
    if (size > s->size)
        s->size = size;
    pthread_mutex_unlock(&s->lock);
    return 0;
}

static const struct vimg_opt_desc ssh_create_opts[] = {
    { "size", VIMG_OPT_SIZE, "Virtual disk size", NULL },
    { NULL, 0, NULL, NULL },
};

static int
ssh_create(const char *filename, struct vimg_opts *opts, struct vimg_error *err)
{
    struct ssh_conf c = { 0 };
    struct ssh_conn cn = { 0 };
    static const uint8_t zero;
    uint64_t size;
    int ret;

    if ((ret = vimg_opts_get_size(opts, "size", 0, &size, err)) < 0 ||
        (ret = ssh_parse_uri(filename, &c, err)) < 0 ||
        (ret = ssh_conf_defaults(&c, err)) < 0 ||
        (ret = ssh_conn_open(&cn, &c, O_RDWR | O_CREAT | O_TRUNC, 0644, err)) < 0)
        goto out;
    if (size > 0)
        ret = ssh_write_buf(&cn, size - 1, &zero, 1, err);
    ssh_conn_park(&cn, &c);
out:
    ssh_conf_free(&c);
    return ret;
}

const struct vimg_driver vimg_ssh_driver = {
    .name = "ssh",
    .kind = VIMG_DRIVER_PROTOCOL,
    .state_size = sizeof(struct ssh_state),
    .protocols = ssh_protocols,
    .has_zero_init = true,          /* created over SFTP: a regular file, holes read as zeros */
    .lacks_get_info = true,
    .open = ssh_open,
    .close = ssh_close,
    .create_opts = ssh_create_opts,
    .create = ssh_create,
    .pread = ssh_pread,
    .pwritev = ssh_pwritev,
    .flush = ssh_flush,
    .length = ssh_length,
    .truncate = ssh_truncate,
};
