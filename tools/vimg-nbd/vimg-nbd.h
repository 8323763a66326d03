/* The vimg-nbd tool's parts: serving (main.c) and listing (list.c). */
#ifndef VIMG_TOOLS_VIMG_NBD_H
#define VIMG_TOOLS_VIMG_NBD_H

#include <stdbool.h>

#include "../common.h"

struct vimg_node;

/* vimg-nbd -L: prints the exports of the server at path, or host:port (over TLS with the
 * client credentials tls_creds, or NULL); returns the exit code. */
int nbd_tool_list(const char *host, const char *port, const char *path, const char *tls_creds,
                  const char *tls_hostname);

/*
 * vimg-nbd --fuse: exports node as the regular file mountpoint until it is
 * unmounted or a signal stops it; writes a byte to ready_fd (if >= 0) once
 * mounted. Returns the exit code.
 */
int nbd_tool_fuse(struct vimg_node *node, const char *mountpoint, bool is_read_only,
                  int ready_fd);

/* vimg-nbd -c: a thread connects the kernel device path to the socket sock. */
struct nbd_device;
int nbd_tool_device_start(const char *path, const char *export_name, int sock,
                          bool is_verbose, struct nbd_device **out);
/* Waits until the device is disconnected. */
void nbd_tool_device_wait(struct nbd_device *dev);
/* vimg-nbd -d: disconnects the device at path; returns the exit code. */
int nbd_tool_disconnect(const char *path);

#endif
