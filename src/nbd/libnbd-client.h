/*
 * What the two users of libnbd's client share: the nbd protocol driver
 * (protocols/nbd.c) and export listing, vimg-nbd -L (nbd/list.c).
 */
#ifndef VIMG_NBD_LIBNBD_CLIENT_H
#define VIMG_NBD_LIBNBD_CLIENT_H

#include <libnbd.h>

#include <vimg/object.h>

/* Asks libnbd for TLS with the client credentials c: x509 from c->dir, or PSK from
 * c->dir/keys.psk as c->username ("qemu" when unset). -1 with libnbd's error set. */
int vimg_nbd_client_set_tls(struct nbd_handle *h, const struct vimg_tls_creds *c);

/* An nbd_debug_callback. libnbd tells the server's message for a refused option only
 * in its debug output: this copies it into user_data, a char[VIMG_ERROR_MSG_MAX]. */
int vimg_nbd_client_debug_capture(void *user_data, const char *context, const char *msg);

#endif
