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

/* The TLS relay of one connection (libnbd-client.c). */
struct vimg_nbd_relay;

/* Connects h, in option mode, to the server on fd (connected; always taken over). x509
 * credentials tls: STARTTLS and the certificate check (against hostname; NULL: none) are
 * done here, and *relay carries the session for libnbd. Otherwise libnbd does TLS (PSK)
 * or none (tls NULL), and *relay is NULL. 0; 1 when libnbd failed (its error set); or
 * -errno with err set. Free *relay with vimg_nbd_relay_free after nbd_close(h). */
int vimg_nbd_client_connect(struct nbd_handle *h, int fd, const struct vimg_tls_creds *tls,
                            const char *hostname, struct vimg_nbd_relay **relay,
                            struct vimg_error *err);
void vimg_nbd_relay_free(struct vimg_nbd_relay *relay);
/* When the server's side of relay (NULL: none) failed inside TLS, as when the server
 * refuses our certificate after the handshake: the errno qemu-img reports; else 0. */
int vimg_nbd_relay_recv_errno(const struct vimg_nbd_relay *relay);

/* An nbd_debug_callback. libnbd tells the server's message for a refused option only
 * in its debug output: this copies it into user_data, a char[VIMG_ERROR_MSG_MAX]. */
int vimg_nbd_client_debug_capture(void *user_data, const char *context, const char *msg);

#endif
