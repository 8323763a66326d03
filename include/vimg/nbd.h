/*
 * The NBD server (vimg-nbd) and the export listing client (vimg-nbd -L).
 * A server serves one export over any number of connections; the caller
 * accepts connections and hands each one to vimg_nbd_server_serve on a
 * thread of its own. Requests of all connections run on one thread pool.
 */
#ifndef VIMG_NBD_H
#define VIMG_NBD_H

#include <stdbool.h>
#include <stdint.h>

#include <vimg/error.h>
#include <vimg/node.h>

enum vimg_nbd_discard {
    VIMG_NBD_DISCARD_IGNORE,    /* trim is accepted and does nothing (qemu-nbd's default) */
    VIMG_NBD_DISCARD_UNMAP,     /* trim and zero writes may deallocate */
};

enum vimg_nbd_detect_zeroes {
    VIMG_NBD_DETECT_ZEROES_OFF,
    VIMG_NBD_DETECT_ZEROES_ON,      /* all-zero writes become zero writes */
    VIMG_NBD_DETECT_ZEROES_UNMAP,   /* ... that may deallocate when discard=unmap */
};

struct vimg_nbd_export {
    const char *name;               /* "" is the default export */
    const char *description;        /* NULL: none */
    struct vimg_node *node;         /* borrowed; outlives the server */
    uint64_t offset;                /* the export starts here in the image (-o) */
    bool is_read_only;
    bool has_allocation_depth;      /* offer the qemu:allocation-depth context (-A) */
    enum vimg_nbd_discard discard;
    enum vimg_nbd_detect_zeroes detect_zeroes;
    unsigned handshake_limit;       /* seconds a client may take to negotiate; 0 = no limit */
    const char *tls_creds;          /* id of a tls-creds-* object (endpoint=server); NULL: none */
    const char *tls_authz;          /* id of an authz-* object checking x509 client DNs */
    const char *bitmap;             /* persistent bitmap offered as qemu:dirty-bitmap:NAME (-B) */
};

/* Server events for -v; called from connection threads. */
typedef void (*vimg_nbd_log_fn)(const char *msg);

struct vimg_nbd_server;

/* Copies *exp (the strings too); n_threads workers run the requests. */
struct vimg_nbd_server *vimg_nbd_server_new(const struct vimg_nbd_export *exp,
                                            unsigned n_threads, vimg_nbd_log_fn log,
                                            struct vimg_error *err);
/*
 * Serves the connected socket fd until the client leaves, then closes fd.
 * Returns 0 after a clean end (NBD_OPT_ABORT, NBD_CMD_DISC or EOF between
 * requests), -errno when the connection broke or the client broke the
 * protocol (err says how).
 */
int vimg_nbd_server_serve(struct vimg_nbd_server *server, int fd, struct vimg_error *err);
/* Callers first wait for their vimg_nbd_server_serve calls to return. */
void vimg_nbd_server_free(struct vimg_nbd_server *server);

/* What NBD_OPT_LIST, NBD_OPT_INFO and NBD_OPT_LIST_META_CONTEXT say about one export. */
struct vimg_nbd_export_info {
    char *name;
    char *description;              /* NULL: none */
    uint64_t size;
    uint16_t flags;                 /* transmission flags */
    uint32_t min_block, opt_block, max_block;   /* 0: not advertised */
    char **contexts;
    unsigned n_contexts;
};

/*
 * Lists a server's exports: path names a unix socket, else host and port
 * (NULL: "localhost", "10809"). ENOTSUP when vimg was built without libnbd.
 */
int vimg_nbd_list(const char *host, const char *port, const char *path,
                  struct vimg_nbd_export_info **out, unsigned *n_out, struct vimg_error *err);
/* The same over TLS with the client credentials tls_creds (NULL: none); tls_hostname
 * (NULL: none) names the host x509 certificates are for. */
int vimg_nbd_list_tls(const char *host, const char *port, const char *path,
                      const char *tls_creds, const char *tls_hostname,
                      struct vimg_nbd_export_info **out, unsigned *n_out,
                      struct vimg_error *err);
void vimg_nbd_list_free(struct vimg_nbd_export_info *list, unsigned n);

/*
 * The client side of a fixed newstyle handshake on the connected socket fd
 * with NBD_OPT_EXPORT_NAME (for a kernel NBD device, vimg-nbd -c): the
 * export's size and transmission flags.
 */
int vimg_nbd_client_handshake(int fd, const char *export_name, uint64_t *size,
                              uint16_t *flags, struct vimg_error *err);

#endif
