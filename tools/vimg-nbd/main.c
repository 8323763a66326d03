/*
 * vimg-nbd: serves an image over NBD as qemu-nbd does (same options, messages
 * and exit codes), or lists a server's exports (-L). One thread per client
 * connection; the library runs the requests on its pool.
 * -c/-d (kernel client) in connect.c. Not yet: -T, --selinux-label;
 * each fails with a message naming it. --fuse exports through FUSE (fuse.c).
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <netdb.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <vimg/image.h>
#include <vimg/nbd.h>
#include <vimg/node.h>
#include <vimg/object.h>
#include <vimg/opts.h>

#include "config.h"
#include "vimg-nbd.h"

#define N_WORKERS 16

enum {
    OPT_CACHE = 256, OPT_AIO, OPT_DISCARD, OPT_DETECT_ZEROES, OPT_OBJECT, OPT_TLS_CREDS,
    OPT_TLS_AUTHZ, OPT_IMAGE_OPTS, OPT_FORK, OPT_PID_FILE, OPT_SELINUX, OPT_HANDSHAKE_LIMIT,
    OPT_FUSE, OPT_TLS_HOSTNAME,
};

struct nbd_tool_opts {
    const char *port, *bind, *socket_path, *filename, *format, *pid_file, *tls_hostname;
    const char *fuse_mount;         /* --fuse: export through FUSE instead of NBD */
    const char *device;             /* -c: serve a kernel NBD device */
    bool is_disconnect;             /* -d: the file name is a device to disconnect */
    unsigned open_flags;
    unsigned shared;
    bool is_persistent, do_fork, is_verbose, is_list, is_image_opts;
    bool is_snapshot;               /* -s: writes go to a temporary qcow2 overlay */
    const char *load_snapshot;      /* -l: serve this internal snapshot, read-only */
    struct vimg_nbd_export exp;
};

/* A client connection and its thread. */
struct nbd_client {
    pthread_t thread;
    int fd;
    bool is_done;               /* set by the thread under nbd_tool.lock */
    struct nbd_client *next;
};

/* What the accept loop and the client threads share. */
static struct {
    struct vimg_nbd_server *server;
    pthread_mutex_t lock;       /* protects clients, n_clients, n_served */
    struct nbd_client *clients;
    unsigned n_clients, n_served;
    bool is_verbose;
} nbd_tool = { .lock = PTHREAD_MUTEX_INITIALIZER };

static volatile sig_atomic_t stop_signal;
static int signal_pipe[2] = { -1, -1 };

static void
usage(void)
{
    printf(
"Usage: vimg-nbd [OPTIONS] FILE\n"
"  or:  vimg-nbd -L [OPTIONS]\n"
"Disk image Network Block Device server (compatible with qemu-nbd)\n"
"\n"
"  -h, --help                display this help and exit\n"
"  -V, --version             output version information and exit\n"
"\n"
"Connection properties:\n"
"  -p, --port=PORT           port to listen on (default `10809')\n"
"  -b, --bind=IFACE          interface to bind to (default `0.0.0.0')\n"
"  -k, --socket=PATH         path to the unix socket\n"
"  -e, --shared=NUM          device can be shared by NUM clients (default '1')\n"
"  -t, --persistent          don't exit on the last connection\n"
"  -v, --verbose             display extra debugging information\n"
"  -x, --export-name=NAME    expose export by name (default is empty string)\n"
"  -D, --description=TEXT    export a human-readable description\n"
"      --handshake-limit=N   seconds a client may take to negotiate (default 10)\n"
"\n"
"Exposing part of the image:\n"
"  -o, --offset=OFFSET       offset into the image\n"
"  -A, --allocation-depth    expose the allocation depth\n"
"  -B, --bitmap=NAME         expose a persistent dirty bitmap\n"
"\n"
"Kernel NBD client support:\n"
"  -c, --connect=DEV         connect FILE to the local NBD device DEV\n"
"  -d, --disconnect          disconnect the specified device\n"
"\n"
"General purpose options:\n"
"  -L, --list                list exports available from another NBD server\n"
"  --object type,id=ID,...   define an object such as 'secret' for providing\n"
"                            passwords and/or encryption keys\n"
"  --fork                    fork off the server process and exit the parent\n"
"                            once the server is running\n"
"  --pid-file=PATH           store the server's process ID in the given file\n"
"\n"
"Block device options:\n"
"  -f, --format=FORMAT       set image format (raw, qcow2, ...)\n"
"  -s, --snapshot            use FILE as an external snapshot, create a temporary\n"
"                            file with backing_file=FILE, redirect the write to\n"
"                            the temporary one\n"
"  -l, --load-snapshot=SNAPSHOT_PARAM\n"
"                            load an internal snapshot inside FILE and export it\n"
"                            as an read-only device, SNAPSHOT_PARAM format is\n"
"                            'snapshot.id=[ID],snapshot.name=[NAME]', or\n"
"                            '[ID_OR_NAME]'\n"
"  -r, --read-only           export read-only\n"
"  -n, --nocache             disable host cache\n"
"      --cache=MODE          set cache mode used to access the disk image, the\n"
"                            valid options are: 'none', 'writeback' (default),\n"
"                            'writethrough', 'directsync' and 'unsafe'\n"
"      --aio=MODE            set AIO mode (native, io_uring or threads)\n"
"      --discard=MODE        set discard mode (ignore, unmap)\n"
"      --detect-zeroes=MODE  set detect-zeroes mode (off, on, unmap)\n"
"      --image-opts          treat FILE as a full set of image options\n"
"\n"
"Beyond qemu-nbd:\n"
"      --fuse=FILE           export the image as the raw file FILE (an existing\n"
"                            regular file it covers) through FUSE instead of NBD;\n"
"                            stop with fusermount3 -u FILE or SIGTERM\n"
"\n"
"TLS:\n"
"  --tls-creds=ID            use id of an earlier --object to provide TLS\n"
"  --tls-hostname=HOSTNAME   override hostname used to check x509 certificate\n"
"  --tls-authz=ID            use id of an earlier --object to provide\n"
"                            authorization\n"
"\n"
"Not yet supported: -T/--trace, --selinux-label\n");
}

static void
print_version(void)
{
    printf("vimg-nbd version " VIMG_VERSION " (compatible with qemu-nbd 7.2)\n"
           "Copyright (c) 2026 the vimg developers\n");
}

static int
try_help(void)
{
    tool_error("Try `%s --help' for more information.", tool_name);
    return 1;
}

static bool
parse_cache(const char *mode, unsigned *flags)
{
    *flags &= ~(VIMG_OPEN_NOCACHE | VIMG_OPEN_NO_FLUSH | VIMG_OPEN_WRITETHROUGH);
    if (strcmp(mode, "none") == 0 || strcmp(mode, "off") == 0)
        *flags |= VIMG_OPEN_NOCACHE;
    else if (strcmp(mode, "directsync") == 0)
        *flags |= VIMG_OPEN_NOCACHE | VIMG_OPEN_WRITETHROUGH;
    else if (strcmp(mode, "writethrough") == 0)
        *flags |= VIMG_OPEN_WRITETHROUGH;
    else if (strcmp(mode, "unsafe") == 0)
        *flags |= VIMG_OPEN_NO_FLUSH;
    else if (strcmp(mode, "writeback") != 0) {
        tool_error("Invalid cache mode `%s'", mode);
        return false;
    }
    return true;
}

static bool
parse_discard(const char *mode, struct vimg_nbd_export *exp)
{
    if (strcmp(mode, "ignore") == 0 || strcmp(mode, "off") == 0)
        exp->discard = VIMG_NBD_DISCARD_IGNORE;
    else if (strcmp(mode, "unmap") == 0 || strcmp(mode, "on") == 0)
        exp->discard = VIMG_NBD_DISCARD_UNMAP;
    else {
        tool_error("Invalid discard mode `%s'", mode);
        return false;
    }
    return true;
}

static bool
parse_detect_zeroes(const char *mode, struct vimg_nbd_export *exp)
{
    if (strcmp(mode, "off") == 0)
        exp->detect_zeroes = VIMG_NBD_DETECT_ZEROES_OFF;
    else if (strcmp(mode, "on") == 0)
        exp->detect_zeroes = VIMG_NBD_DETECT_ZEROES_ON;
    else if (strcmp(mode, "unmap") == 0)
        exp->detect_zeroes = VIMG_NBD_DETECT_ZEROES_UNMAP;
    else {
        tool_error("Failed to parse detect_zeroes mode: invalid parameter value: %s", mode);
        return false;
    }
    return true;
}

/* A plain decimal number in [min, max]; false for anything else. */
static bool
parse_number(const char *s, unsigned long long min, unsigned long long max,
             unsigned long long *out)
{
    char *end;

    errno = 0;
    if (*s < '0' || *s > '9')
        return false;
    *out = strtoull(s, &end, 10);
    return errno == 0 && *end == '\0' && *out >= min && *out <= max;
}

static int
unsupported_option(const char *name)
{
    tool_error("%s is not supported yet", name);
    return 1;
}

/* Reports a getopt failure as qemu-nbd does; returns the exit code. */
static int
bad_option(char **argv, int c)
{
    const char *arg = argv[optind - 1];

    if (c == ':') {
        if (strncmp(arg, "--", 2) == 0)
            tool_error("option '%s' requires an argument", arg);
        else
            tool_error("option requires an argument -- '%c'", optopt);
    } else if (optopt && strncmp(arg, "--", 2) != 0) {
        tool_error("invalid option -- '%c'", optopt);
    } else {
        tool_error("unrecognized option '%s'", arg);
    }
    return try_help();
}

static int
parse_value_option(int c, const char *arg, struct nbd_tool_opts *o)
{
    unsigned long long n;

    switch (c) {
    case 'o':
        if (!parse_number(arg, 0, INT64_MAX, &n)) {
            tool_error("Invalid offset '%s'", arg);
            return 1;
        }
        o->exp.offset = n;
        return 0;
    case 'e':
        if (!parse_number(arg, 0, 65536, &n)) {
            tool_error("Invalid shared device number '%s'", arg);
            return 1;
        }
        /* 0, which qemu-nbd accepts too, sets no limit. */
        o->shared = n ? (unsigned)n : UINT_MAX;
        return 0;
    case OPT_HANDSHAKE_LIMIT:
        if (!parse_number(arg, 0, 86400, &n)) {
            tool_error("Invalid handshake limit '%s'", arg);
            return 1;
        }
        o->exp.handshake_limit = (unsigned)n;
        return 0;
    case OPT_AIO:
        o->open_flags &= ~(VIMG_OPEN_AIO_NATIVE | VIMG_OPEN_AIO_IO_URING);
        if (strcmp(arg, "native") == 0) {
            o->open_flags |= VIMG_OPEN_AIO_NATIVE;
        } else if (strcmp(arg, "io_uring") == 0) {
            o->open_flags |= VIMG_OPEN_AIO_IO_URING;
        } else if (strcmp(arg, "threads") != 0) {
            tool_error("Invalid aio mode '%s'", arg);
            return 1;
        }
        return 0;
    case OPT_CACHE:
        return parse_cache(arg, &o->open_flags) ? 0 : 1;
    case OPT_DISCARD:
        return parse_discard(arg, &o->exp) ? 0 : 1;
    case OPT_DETECT_ZEROES:
        return parse_detect_zeroes(arg, &o->exp) ? 0 : 1;
    case OPT_OBJECT: {
        struct vimg_error err = { 0 };
        if (vimg_object_add(arg, &err) < 0) {
            tool_error("%s", err.msg);
            return 1;
        }
        return 0;
    }
    default:
        return -1;
    }
}

static int
parse_unsupported(int c)
{
    switch (c) {
    case OPT_SELINUX: return unsupported_option("--selinux-label");
#ifndef VIMG_HAVE_FUSE
    case OPT_FUSE: return unsupported_option("--fuse (built without fuse3)");
#endif
    case 'T': return unsupported_option("-T/--trace");
    default: return -1;
    }
}

/* Returns -1 to go on, else the exit code. */
static int
parse_args(int argc, char **argv, struct nbd_tool_opts *o)
{
    static const struct option long_opts[] = {
        { "help", no_argument, NULL, 'h' },
        { "version", no_argument, NULL, 'V' },
        { "bind", required_argument, NULL, 'b' },
        { "port", required_argument, NULL, 'p' },
        { "socket", required_argument, NULL, 'k' },
        { "offset", required_argument, NULL, 'o' },
        { "read-only", no_argument, NULL, 'r' },
        { "allocation-depth", no_argument, NULL, 'A' },
        { "bitmap", required_argument, NULL, 'B' },
        { "connect", required_argument, NULL, 'c' },
        { "disconnect", no_argument, NULL, 'd' },
        { "list", no_argument, NULL, 'L' },
        { "snapshot", no_argument, NULL, 's' },
        { "load-snapshot", required_argument, NULL, 'l' },
        { "nocache", no_argument, NULL, 'n' },
        { "cache", required_argument, NULL, OPT_CACHE },
        { "aio", required_argument, NULL, OPT_AIO },
        { "discard", required_argument, NULL, OPT_DISCARD },
        { "detect-zeroes", required_argument, NULL, OPT_DETECT_ZEROES },
        { "shared", required_argument, NULL, 'e' },
        { "format", required_argument, NULL, 'f' },
        { "persistent", no_argument, NULL, 't' },
        { "verbose", no_argument, NULL, 'v' },
        { "object", required_argument, NULL, OPT_OBJECT },
        { "export-name", required_argument, NULL, 'x' },
        { "description", required_argument, NULL, 'D' },
        { "tls-creds", required_argument, NULL, OPT_TLS_CREDS },
        { "tls-authz", required_argument, NULL, OPT_TLS_AUTHZ },
        { "tls-hostname", required_argument, NULL, OPT_TLS_HOSTNAME },
        { "image-opts", no_argument, NULL, OPT_IMAGE_OPTS },
        { "trace", required_argument, NULL, 'T' },
        { "fork", no_argument, NULL, OPT_FORK },
        { "pid-file", required_argument, NULL, OPT_PID_FILE },
        { "selinux-label", required_argument, NULL, OPT_SELINUX },
        { "handshake-limit", required_argument, NULL, OPT_HANDSHAKE_LIMIT },
        { "fuse", required_argument, NULL, OPT_FUSE },
        { NULL, 0, NULL, 0 },
    };
    int c, ret;

    opterr = 0;
    while ((c = getopt_long(argc, argv, ":hVb:o:p:rsnc:dvk:e:f:tl:x:T:D:AB:L", long_opts,
                            NULL)) != -1) {
        if ((ret = parse_value_option(c, optarg, o)) >= 0 || (ret = parse_unsupported(c)) >= 0) {
            if (ret)
                return ret;
            continue;
        }
        switch (c) {
        case 'h': usage(); return 0;
        case 'V': print_version(); return 0;
        case 'b': o->bind = optarg; break;
        case 'p': o->port = optarg; break;
        case 'k': o->socket_path = optarg; break;
        case 'r': o->exp.is_read_only = true; break;
        case 'A': o->exp.has_allocation_depth = true; break;
        case 'L': o->is_list = true; break;
        case 's': o->is_snapshot = true; break;
        case 'l': o->load_snapshot = optarg; o->exp.is_read_only = true; break;
        case 'B': o->exp.bitmap = optarg; break;
        case 'c': o->device = optarg; break;
        case 'd': o->is_disconnect = true; break;
        case 'n': parse_cache("none", &o->open_flags); break;
        case 'f': o->format = optarg; break;
        case 't': o->is_persistent = true; break;
        case 'v': o->is_verbose = true; break;
        case 'x': o->exp.name = optarg; break;
        case 'D': o->exp.description = optarg; break;
        case OPT_IMAGE_OPTS: o->is_image_opts = true; break;
        case OPT_FORK: o->do_fork = true; break;
        case OPT_PID_FILE: o->pid_file = optarg; break;
        case OPT_TLS_CREDS: o->exp.tls_creds = optarg; break;
        case OPT_TLS_HOSTNAME: o->tls_hostname = optarg; break;
        case OPT_TLS_AUTHZ: o->exp.tls_authz = optarg; break;
#ifdef VIMG_HAVE_FUSE
        case OPT_FUSE: o->fuse_mount = optarg; break;
#endif
        default: return bad_option(argv, c);
        }
    }
    return -1;
}

/* qemu-nbd checks the credentials before it opens anything. */
static bool
check_tls_creds(const char *id, bool want_server)
{
    struct vimg_error err = { 0 };
    struct vimg_tls_creds creds;

    if (vimg_tls_creds_lookup(id, &creds, &err) < 0) {
        tool_error("Failed to get TLS creds: %s", err.msg);
        return false;
    }
    vimg_tls_creds_release(&creds);
    if (creds.is_server != want_server) {
        tool_error("Failed to get TLS creds: Expected TLS credentials for a %s endpoint",
                   want_server ? "server" : "client");
        return false;
    }
    return true;
}

static int
check_args(int argc, char **argv, struct nbd_tool_opts *o)
{
    if (o->exp.tls_authz && !o->exp.tls_creds) {
        tool_error("--tls-authz is not permitted without --tls-creds");
        return 1;
    }
    if (o->tls_hostname && !o->exp.tls_creds) {
        tool_error("--tls-hostname is not permitted without --tls-creds");
        return 1;
    }
    if (o->is_list) {
        if (optind != argc) {
            tool_error("List mode is incompatible with a file name");
            return 1;
        }
        if (o->device || o->is_disconnect) {
            tool_error("List mode is incompatible with per-device settings");
            return 1;
        }
        if (o->exp.tls_authz) {
            tool_error("TLS authorization is incompatible with export list");
            return 1;
        }
        return o->exp.tls_creds && !check_tls_creds(o->exp.tls_creds, false) ? 1 : -1;
    }
    if (optind != argc - 1) {
        tool_error("Invalid number of arguments");
        /* Here, unlike after a bad option, qemu-nbd prints the hint without its name. */
        fprintf(stderr, "Try `%s --help' for more information.\n", tool_name);
        return 1;
    }
    o->filename = argv[optind];
    if (o->exp.detect_zeroes == VIMG_NBD_DETECT_ZEROES_UNMAP &&
        o->exp.discard != VIMG_NBD_DISCARD_UNMAP) {
        tool_error("setting detect-zeroes to unmap is not allowed without setting discard "
                   "operation to unmap");
        return 1;
    }
    if (strlen(o->exp.name) > 4096) {
        tool_error("export name '%s' too long", o->exp.name);
        return 1;
    }
    /* qemu-nbd's order: these two before the credentials are looked up. */
    if (o->device && o->exp.tls_creds) {
        tool_error("TLS is not supported with a host device");
        return 1;
    }
    if (o->exp.tls_creds && !check_tls_creds(o->exp.tls_creds, true))
        return 1;
    if (o->is_image_opts && o->format) {
        tool_error("--image-opts and -f are mutually exclusive");
        return 1;
    }
    return -1;
}

static int
listen_unix(const char *path)
{
    struct sockaddr_un sun = { .sun_family = AF_UNIX };
    int fd;

    if (strlen(path) >= sizeof(sun.sun_path)) {
        tool_error("UNIX socket path '%s' is too long", path);
        return -1;
    }
    memcpy(sun.sun_path, path, strlen(path));
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        tool_error("Failed to create socket: %s", strerror(errno));
        return -1;
    }
    unlink(path);
    if (bind(fd, (struct sockaddr *)&sun, sizeof(sun)) < 0 || listen(fd, 16) < 0) {
        tool_error("Failed to bind socket to %s: %s", path, strerror(errno));
        close(fd);
        return -1;
    }
    return fd;
}

static int
listen_inet(const char *host, const char *port)
{
    struct addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
                              .ai_flags = AI_PASSIVE };
    struct addrinfo *res, *ai;
    int fd = -1, e = EADDRINUSE, r, on = 1;

    if ((r = getaddrinfo(host, port, &hints, &res)) != 0) {
        tool_error("address resolution failed for %s:%s: %s", host, port, gai_strerror(r));
        return -1;
    }
    for (ai = res; ai; ai = ai->ai_next) {
        fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
        if (fd < 0) {
            e = errno;
            continue;
        }
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof(on));
        if (bind(fd, ai->ai_addr, ai->ai_addrlen) == 0 && listen(fd, 16) == 0)
            break;
        e = errno;
        close(fd);
        fd = -1;
    }
    freeaddrinfo(res);
    if (fd < 0)
        tool_error("Failed to find an available port: %s", strerror(e));
    return fd;
}

/* -l ID_OR_NAME or -l snapshot.id=ID,snapshot.name=NAME, as qemu-nbd takes them. */
static bool
load_snapshot(struct vimg_node *node, const char *param)
{
    struct vimg_error err = { 0 };
    char *copy, *tok, *save = NULL;
    const char *id = NULL, *name = NULL;
    int ret;

    if (strncmp(param, "snapshot.", 9) != 0) {
        /* A plain value is an id, else a name. */
        ret = vimg_snapshot_load_tmp(node, param, NULL, &err);
        if (ret == -ENOENT) {
            err = (struct vimg_error){ 0 };
            ret = vimg_snapshot_load_tmp(node, NULL, param, &err);
        }
    } else {
        if (!(copy = strdup(param)))
            return false;
        for (tok = strtok_r(copy, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
            char *eq = strchr(tok, '=');
            if (eq)
                *eq = '\0';
            if (eq && strcmp(tok, "snapshot.id") == 0) {
                id = eq + 1;
            } else if (eq && strcmp(tok, "snapshot.name") == 0) {
                name = eq + 1;
            } else {
                tool_error("Invalid parameter '%s'", tok);
                tool_error("Failed in parsing snapshot param `%s'", param);
                free(copy);
                return false;
            }
        }
        ret = vimg_snapshot_load_tmp(node, id, name, &err);
        free(copy);
    }
    if (ret < 0)
        tool_error("Failed to load snapshot: %s", err.msg);
    return ret == 0;
}

/*
 * -s: a temporary qcow2 overlay (in $TMPDIR, else /var/tmp, deleted once
 * open) over the opened image, which is then closed and reopened as the
 * overlay's backing file. Returns the overlay, or NULL after saying why.
 */
static struct vimg_node *
open_overlay(struct vimg_node *base, unsigned flags)
{
    struct vimg_error err = { 0 };
    struct vimg_node *top = NULL;
    struct vimg_opts *opts = vimg_opts_new();
    const char *dir = getenv("TMPDIR") ? getenv("TMPDIR") : "/var/tmp";
    char tmp[PATH_MAX], backing[PATH_MAX], size[32];
    const char *name = vimg_node_filename(base);
    int64_t len = vimg_node_length(base, &err);
    int fd;

    if (len < 0 || !opts)
        goto fail;
    /* The overlay lives elsewhere: a relative backing path must become absolute. */
    if (!realpath(name, backing))
        snprintf(backing, sizeof(backing), "%s", name);
    snprintf(size, sizeof(size), "%lld", (long long)len);
    snprintf(tmp, sizeof(tmp), "%s/vl.XXXXXX", dir);
    if ((fd = mkstemp(tmp)) < 0) {
        vimg_error_set(&err, errno, "Could not create temporary overlay '%s': %s", tmp,
                       strerror(errno));
        goto fail;
    }
    close(fd);
    if (vimg_opts_set(opts, "size", size, &err) < 0 ||
        vimg_opts_set(opts, "backing_file", backing, &err) < 0 ||
        vimg_opts_set(opts, "backing_fmt", vimg_node_format(base), &err) < 0 ||
        vimg_create(tmp, "qcow2", opts, &err) < 0 ||
        vimg_open(&top, tmp, "qcow2", NULL, flags | VIMG_OPEN_RDWR, &err) < 0)
        top = NULL;
    unlink(tmp);
fail:
    vimg_opts_free(opts);
    if (!top)
        tool_error("Failed to create the temporary snapshot: %s", err.msg);
    return top;
}

static struct vimg_node *
open_image(const struct nbd_tool_opts *o)
{
    struct vimg_error err = { 0 };
    struct vimg_node *node = NULL;
    struct vimg_opts *opts = NULL;
    unsigned flags = o->open_flags | VIMG_OPEN_NO_SHARE_RESIZE;
    int ret;

    if (!o->exp.is_read_only && !o->is_snapshot)
        flags |= VIMG_OPEN_RDWR;
    if (o->is_image_opts) {
        opts = vimg_opts_new();
        if (!opts || vimg_opts_parse(opts, o->filename, NULL, &err) < 0) {
            tool_error("%s", err.msg);
            vimg_opts_free(opts);
            return NULL;
        }
        ret = vimg_open(&node, NULL, NULL, opts, flags, &err);
        vimg_opts_free(opts);
    } else {
        ret = vimg_open(&node, o->filename, o->format, NULL, flags, &err);
    }
    if (ret < 0) {
        tool_error("Failed to blk_new_open '%s': %s", o->filename, err.msg);
        return NULL;
    }
    /* qemu-nbd puts the overlay on first, so -l then looks for the snapshot in it. */
    if (o->is_snapshot) {
        struct vimg_node *top = open_overlay(node, o->open_flags);
        vimg_close(node);
        if (!(node = top))
            return NULL;
    }
    if (o->load_snapshot && o->is_snapshot) {
        /* The fresh overlay holds no snapshot, and it is where qemu-nbd looks. */
        tool_error("Failed to load snapshot: Can't find snapshot");
        vimg_close(node);
        return NULL;
    }
    if (o->load_snapshot && !load_snapshot(node, o->load_snapshot)) {
        vimg_close(node);
        return NULL;
    }
    return node;
}

static void
log_message(const char *msg)
{
    fprintf(stderr, "%s: %s\n", tool_name, msg);
}

static void *
client_thread(void *arg)
{
    struct nbd_client *client = arg;
    struct vimg_error err = { 0 };

    /* qemu-nbd reports failed negotiations (TLS, --tls-authz) also without -v. */
    if (vimg_nbd_server_serve(nbd_tool.server, client->fd, &err) < 0 &&
        (nbd_tool.is_verbose || strncmp(err.msg, "option negotiation failed: ", 27) == 0))
        log_message(err.msg);
    pthread_mutex_lock(&nbd_tool.lock);
    client->is_done = true;
    nbd_tool.n_clients--;
    pthread_mutex_unlock(&nbd_tool.lock);
    if (signal_pipe[1] >= 0 && write(signal_pipe[1], "c", 1) < 0)
        return NULL;    /* the accept loop polls again within a second anyway */
    return NULL;
}

/* Joins the threads of clients that left. Called with nbd_tool.lock held. */
static void
reap_clients(bool wait_all)
{
    struct nbd_client **p = &nbd_tool.clients;

    while (*p) {
        struct nbd_client *c = *p;
        if (!c->is_done && !wait_all) {
            p = &c->next;
            continue;
        }
        *p = c->next;
        pthread_mutex_unlock(&nbd_tool.lock);
        pthread_join(c->thread, NULL);
        pthread_mutex_lock(&nbd_tool.lock);
        free(c);
    }
}

static void
start_client(int fd)
{
    struct nbd_client *c = calloc(1, sizeof(*c));

    if (!c) {
        close(fd);
        return;
    }
    c->fd = fd;
    pthread_mutex_lock(&nbd_tool.lock);
    if (pthread_create(&c->thread, NULL, client_thread, c) != 0) {
        pthread_mutex_unlock(&nbd_tool.lock);
        close(fd);
        free(c);
        return;
    }
    c->next = nbd_tool.clients;
    nbd_tool.clients = c;
    nbd_tool.n_clients++;
    nbd_tool.n_served++;
    pthread_mutex_unlock(&nbd_tool.lock);
}

/* Accepts clients until a signal, or (without -t) until the last client leaves. */
static void
serve_loop(int listen_fd, const struct nbd_tool_opts *o)
{
    for (;;) {
        struct pollfd fds[2] = { { .fd = signal_pipe[0], .events = POLLIN },
                                 { .fd = listen_fd, .events = POLLIN } };
        bool is_full, is_over;
        char drain[64];
        pthread_mutex_lock(&nbd_tool.lock);
        reap_clients(false);
        is_full = nbd_tool.n_clients >= o->shared;
        is_over = !o->is_persistent && nbd_tool.n_served > 0 && nbd_tool.n_clients == 0;
        pthread_mutex_unlock(&nbd_tool.lock);
        if (is_over || stop_signal)
            return;
        if (poll(fds, is_full ? 1 : 2, 1000) < 0 && errno != EINTR)
            return;
        if (fds[0].revents & POLLIN && read(signal_pipe[0], drain, sizeof(drain)) < 0)
            return;
        if (!is_full && (fds[1].revents & POLLIN)) {
            int fd = accept4(listen_fd, NULL, NULL, SOCK_CLOEXEC);
            if (fd >= 0)
                start_client(fd);
        }
    }
}

static void
stop_clients(void)
{
    pthread_mutex_lock(&nbd_tool.lock);
    for (struct nbd_client *c = nbd_tool.clients; c; c = c->next)
        if (!c->is_done)
            shutdown(c->fd, SHUT_RDWR);
    reap_clients(true);
    pthread_mutex_unlock(&nbd_tool.lock);
}

static void
on_signal(int sig)
{
    stop_signal = sig;
    if (write(signal_pipe[1], "s", 1) < 0)
        stop_signal = sig;
}

static int
setup_signals(void)
{
    struct sigaction sa = { .sa_handler = on_signal };

    if (pipe2(signal_pipe, O_CLOEXEC | O_NONBLOCK) < 0) {
        tool_error("Failed to create a pipe: %s", strerror(errno));
        return -1;
    }
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    return 0;
}

/* --fork: the parent exits once the child says the server runs (a byte on the pipe). */
static int
daemonize(int *ready_fd)
{
    int fds[2];
    pid_t pid;
    char c;

    if (pipe2(fds, O_CLOEXEC) < 0 || (pid = fork()) < 0) {
        tool_error("Failed to fork: %s", strerror(errno));
        return -1;
    }
    if (pid > 0) {
        close(fds[1]);
        _exit(read(fds[0], &c, 1) == 1 ? 0 : 1);
    }
    close(fds[0]);
    setsid();
    *ready_fd = fds[1];
    return 0;
}

static bool
write_pid_file(const char *path)
{
    FILE *f = fopen(path, "w");

    if (!f || fprintf(f, "%d\n", (int)getpid()) < 0 || fclose(f) != 0) {
        tool_error("Failed to write pid file '%s': %s", path, strerror(errno));
        return false;
    }
    return true;
}

static void
detach_stdio(void)
{
    int fd = open("/dev/null", O_RDWR);

    if (fd < 0)
        return;
    dup2(fd, STDIN_FILENO);
    dup2(fd, STDOUT_FILENO);
    dup2(fd, STDERR_FILENO);
    if (fd > STDERR_FILENO)
        close(fd);
}

static int
run_server(struct nbd_tool_opts *o)
{
    struct vimg_error err = { 0 };
    struct vimg_node *node;
    int listen_fd, ready_fd = -1, ret = 1;

    listen_fd = o->socket_path ? listen_unix(o->socket_path)
                               : listen_inet(o->bind ? o->bind : "0.0.0.0",
                                             o->port ? o->port : "10809");
    if (listen_fd < 0)
        return 1;
    if (!(node = open_image(o)))
        goto out_listen;
    o->exp.node = node;
    if (setup_signals() < 0 || (o->do_fork && daemonize(&ready_fd) < 0))
        goto out_node;
    if (o->pid_file && !write_pid_file(o->pid_file))
        goto out_node;
    nbd_tool.is_verbose = o->is_verbose;
    nbd_tool.server = vimg_nbd_server_new(&o->exp, N_WORKERS,
                                          o->is_verbose ? log_message : NULL, &err);
    if (!nbd_tool.server) {
        tool_error("%s", err.msg);
        goto out_node;
    }
    if (ready_fd >= 0) {
        detach_stdio();
        if (write(ready_fd, "r", 1) != 1)
            goto out_server;
        close(ready_fd);
    }
    serve_loop(listen_fd, o);
    stop_clients();
    ret = 0;
out_server:
    vimg_nbd_server_free(nbd_tool.server);
out_node:
    vimg_close(node);
out_listen:
    close(listen_fd);
    if (o->socket_path)
        unlink(o->socket_path);
    return ret;
}

/*
 * -c DEV: the server serves one end of a socket pair, the kernel device the
 * other (connect.c); the process ends when the device is disconnected.
 */
static int
run_device(struct nbd_tool_opts *o)
{
    struct vimg_error err = { 0 };
    struct nbd_device *dev = NULL;
    struct vimg_node *node;
    int sv[2], ready_fd = -1, ret = 1;

    if (!(node = open_image(o)))
        return 1;
    o->exp.node = node;
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0) {
        tool_error("Failed to create a socket pair: %s", strerror(errno));
        goto out_node;
    }
    if ((o->do_fork && daemonize(&ready_fd) < 0) ||
        (o->pid_file && !write_pid_file(o->pid_file)))
        goto out_sock;
    if (!(nbd_tool.server = vimg_nbd_server_new(&o->exp, N_WORKERS,
                                                o->is_verbose ? log_message : NULL, &err))) {
        tool_error("%s", err.msg);
        goto out_sock;
    }
    if (nbd_tool_device_start(o->device, o->exp.name, sv[1], o->is_verbose, &dev) < 0)
        goto out_server;
    if (ready_fd >= 0) {
        detach_stdio();
        if (write(ready_fd, "r", 1) == 1)
            close(ready_fd);
    }
    /* Returns when the kernel closes its end (the device was disconnected). */
    if (vimg_nbd_server_serve(nbd_tool.server, sv[0], &err) < 0 && o->is_verbose)
        tool_error("%s", err.msg);
    sv[0] = -1;
    nbd_tool_device_wait(dev);
    ret = 0;
out_server:
    vimg_nbd_server_free(nbd_tool.server);
out_sock:
    if (sv[0] >= 0)
        close(sv[0]);
    if (!dev)
        close(sv[1]);
out_node:
    vimg_close(node);
    return ret;
}

#ifdef VIMG_HAVE_FUSE
/* --fuse: the same image opening, forking and pid file as the NBD server. */
static int
run_fuse(struct nbd_tool_opts *o)
{
    struct vimg_node *node;
    int ready_fd = -1, ret = 1;

    if (!(node = open_image(o)))
        return 1;
    if (o->do_fork && daemonize(&ready_fd) < 0)
        goto out;
    if (o->pid_file && !write_pid_file(o->pid_file))
        goto out;
    if (ready_fd >= 0)
        detach_stdio();
    ret = nbd_tool_fuse(node, o->fuse_mount, o->exp.is_read_only, ready_fd);
out:
    vimg_close(node);
    return ret;
}
#else
static int
run_fuse(struct nbd_tool_opts *o)
{
    (void)o;
    return 1;
}
#endif

int
main(int argc, char **argv)
{
    struct nbd_tool_opts o = { .shared = 1, .exp.name = "", .exp.handshake_limit = 10 };
    int ret;

    tool_name = "vimg-nbd";
    tool_setup_warnings();
    if ((ret = parse_args(argc, argv, &o)) >= 0 || (ret = check_args(argc, argv, &o)) >= 0)
        return ret;
    if (o.is_list)
        return nbd_tool_list(o.socket_path ? NULL : (o.bind ? o.bind : "0.0.0.0"),
                             o.port ? o.port : "10809", o.socket_path, o.exp.tls_creds,
                             o.tls_hostname);
    if (o.is_disconnect)
        ret = nbd_tool_disconnect(o.filename);
    else if (o.device)
        ret = run_device(&o);
    else
        ret = o.fuse_mount ? run_fuse(&o) : run_server(&o);
    vimg_objects_clear();
    return ret;
}
